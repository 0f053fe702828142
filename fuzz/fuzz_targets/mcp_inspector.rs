//! Fuzzes the streaming MCP and A2A inspector as deputyd uses it: pieces are fed until it has
//! seen enough, the decision is made there, and the rest of the body is fed after it. Whatever
//! the body, it never panics, and where the body is cut cannot change what is decided: a call
//! decided early is the call the whole body makes, and a body refused when read whole is refused
//! when read in pieces (a later member that would change the decision is a refusal). The input
//! is the body; its length picks how the service is marked and the size of the pieces.
//! Seeds: fuzz/seeds/mcp_inspector.
#![no_main]

use std::sync::LazyLock;

use deputy_policy::mcp::{ArgumentPointers, Call, Inspector, Protocol, Seen};
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

/// Reads `pieces` as deputyd does: the decision as soon as the inspector has seen enough.
fn read(protocol: &Protocol, pieces: &[&[u8]]) -> Outcome {
    let mut inspector = Inspector::for_protocol(protocol);
    let mut decided = None;
    for piece in pieces {
        if inspector.feed(piece).is_err() {
            return Outcome::Refused;
        }
        if decided.is_none() && inspector.seen() != Seen::NeedMore {
            decided = Some(inspector.decide());
        }
    }
    if inspector.finish().is_err() {
        return Outcome::Refused;
    }
    Outcome::Decided(decided.unwrap_or_else(|| inspector.decide()))
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
    match (&whole, &split) {
        (_, Outcome::Decided(_)) | (Outcome::Refused, _) => assert_eq!(
            whole, split,
            "read whole and in pieces of {size} bytes, the body decides differently"
        ),
        // Refused in pieces and not whole: a member after an early decision would have changed
        // it, which only the early reader can see.
        (Outcome::Decided(_), Outcome::Refused) => {}
    }
});
