//! The support-triage example (`examples/support-triage`) runs end to end, as its README says:
//! one command, three nodes, Vault, PostgreSQL, Python agents on the SDK and the official MCP
//! SDK, the shipped policy; it checks each hop itself and exits 0 only if all went as described.

use std::path::Path;
use std::process::Command;

use deputy_tests::{binary, peers, run};

#[test]
fn the_support_triage_example_runs_end_to_end() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/support-triage");
    let bin_dir = binary("deputyd").parent().expect("bin dir").to_owned();
    // What `run` does after building: the binaries under test, the peers from the cache.
    let (status, output) = run(Command::new(peers::peer("deputy-sdk-python"))
        .arg(example.join("run.py"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--vault")
        .arg(peers::peer("vault")));
    assert!(status.success(), "the example failed:\n{output}");
    for says in [
        "refused by service-node: PolicyDenied",
        "held for a human's approval",
        "refunded 40 for user:alice@example.org",
        "Every hop went as described",
    ] {
        assert!(output.contains(says), "{says:?} not in:\n{output}");
    }
}
