//! Makes `N` decisions of a policy (a directory of Rego, or a `.tar.gz` bundle from
//! `opa build -t wasm`) on one decision case, and nothing else: the
//! workload `bench/policy_instructions.py` counts instructions of under valgrind (a count that,
//! unlike time, does not move with the machine's load).
//!
//! Run: `cargo run --release -p deputy-policy --example decide_loop -- DIR|BUNDLE CASE.json N`

use std::path::PathBuf;

use deputy_policy::{Policy, PolicyInput, PolicySource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: decide_loop POLICY_DIR|BUNDLE.tar.gz CASE.json N";
    let path = PathBuf::from(args.next().ok_or(usage)?);
    let case = PathBuf::from(args.next().ok_or(usage)?);
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let source = if path.to_string_lossy().ends_with(".tar.gz") {
        PolicySource::WasmBundle(path)
    } else {
        PolicySource::RegoDir(path)
    };
    let policy = Policy::load(source)?;
    let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&case)?)?;
    let input: PolicyInput = serde_json::from_value(case["input"].clone())?;
    let mut allowed = 0usize;
    for _ in 0..count {
        allowed += usize::from(std::hint::black_box(policy.decide(&input)).decision.allow);
    }
    println!("{allowed} of {count} allowed");
    Ok(())
}
