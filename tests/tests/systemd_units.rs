//! The shipped systemd units are sandboxed: `systemd-analyze security --offline=true` scores
//! each at most 2.0 ("OK" or better), as a platform team checking them would.

use std::path::Path;
use std::process::Command;

/// Highest exposure a shipped unit may have.
const MAX_EXPOSURE: f64 = 2.0;

fn exposure(unit: &str) -> (f64, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/systemd")
        .join(unit);
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (systemd 252 or later) runs the unit checks; install systemd");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let score = text
        .lines()
        .find_map(|line| line.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze's report:\n{text}"));
    (score, text)
}

#[test]
fn both_shipped_units_score_at_most_two() {
    for unit in ["deputyd.service", "deputy-issuer.service"] {
        let (score, report) = exposure(unit);
        assert!(
            score <= MAX_EXPOSURE,
            "{unit} scores {score}, over {MAX_EXPOSURE}:\n{report}"
        );
    }
}

#[test]
fn deputyd_keeps_what_it_needs_and_says_why_it_keeps_more() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/deputyd.service"),
    )
    .expect("unit");
    // sock_diag (netlink) and its listeners, nothing more.
    assert!(unit.contains("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"));
    // One capability, for credential files given to their agents.
    assert!(unit.contains("CapabilityBoundingSet=CAP_CHOWN\n"));
    // deputyd's own Landlock sandbox needs its system calls, which @system-service lacks.
    assert!(unit.contains("landlock_create_ruleset landlock_add_rule landlock_restrict_self"));
    assert!(unit.contains("UMask=0077\n"));
    // Restarts: the sockets are kept, their files too, and the hand-over is asked for.
    for setting in [
        "FileDescriptorStoreMax=512\n",
        "RuntimeDirectoryPreserve=restart\n",
        "RestartForceExitStatus=75\n",
        "SuccessExitStatus=75\n",
        "Environment=DEPUTYD_HANDOVER=1\n",
    ] {
        assert!(unit.contains(setting), "{setting}");
    }
    // The wasm engine's JIT is why writable executable memory stays allowed; the unit says so.
    assert!(!unit.contains("MemoryDenyWriteExecute=yes"));
    assert!(unit.contains("# - MemoryDenyWriteExecute: the policy's wasm engine"));
}
