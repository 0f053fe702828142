//! Fuzzes the streaming MCP and A2A inspector: whatever the body, it never panics, and reading
//! it in pieces decides exactly as reading it whole does (deputyd reads a body in whatever
//! pieces the network delivers, and a decision that depended on them could be steered). The
//! input is the body; its length picks how the service is marked and the size of the pieces.
//! Seeds: fuzz/seeds/mcp_inspector.
#![no_main]

use std::sync::LazyLock;

use deputy_policy::mcp::{ArgumentPointers, Call, Inspector, Protocol};
use libfuzzer_sys::fuzz_target;

/// Declared arguments, as a service marked `mcp = true` with `arguments = [...]` has.
static POINTERS: LazyLock<ArgumentPointers> = LazyLock::new(|| {
    ArgumentPointers::parse(&["/customer_id".to_owned(), "/filter/team".to_owned()])
        .expect("valid pointers")
});

/// What the inspector made of a body: the call decided on, or a refusal.
#[derive(Debug, PartialEq)]
enum Outcome {
    Decided(Option<Call>),
    Refused,
}

fn read(protocol: &Protocol, pieces: &[&[u8]]) -> Outcome {
    let mut inspector = Inspector::for_protocol(protocol);
    for piece in pieces {
        if inspector.feed(piece).is_err() {
            return Outcome::Refused;
        }
    }
    let call = inspector.decide();
    match inspector.finish() {
        Ok(()) => Outcome::Decided(call),
        Err(_) => Outcome::Refused,
    }
}

fuzz_target!(|body: &[u8]| {
    let protocol = match body.len() % 3 {
        0 => Protocol::Unmarked,
        1 => Protocol::A2a,
        _ => Protocol::Mcp(POINTERS.clone()),
    };
    let whole = read(&protocol, &[body]);
    let size = body.len() / 3 % 7 + 1;
    let pieces: Vec<&[u8]> = body.chunks(size).collect();
    let split = read(&protocol, &pieces);
    assert_eq!(
        whole, split,
        "read whole and in pieces of {size} bytes, the body decides differently"
    );
});
