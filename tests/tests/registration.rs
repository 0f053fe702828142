//! How agents are registered, as an operator meets it: `deputyd --check` and deputyd's start
//! refuse what would let an agent hold its own key (or be mistaken for another), an explicit
//! opt-in keeps the old shape, and `deputy issuer` refuses an entries file that registers an
//! agent both for deputyd and for the Workload API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deputy_tests::{
    IssuerProcess, NodeProcess, binary, eventually, my_uid, run, write_entries, write_node_config,
};

/// `deputyd --check --config FILE`: exit status and output.
fn check(config: &Path) -> (std::process::ExitStatus, String) {
    run(Command::new(binary("deputyd"))
        .arg("--check")
        .arg("--config")
        .arg(config))
}

/// A node config for the issuer in `dir` whose agents' sections are `agents`, verbatim.
fn config_with(dir: &Path, agents: &str) -> PathBuf {
    let base = write_node_config(dir, &[]);
    let mut text = std::fs::read_to_string(&base).expect("read");
    text.push_str(agents);
    std::fs::write(&base, text).expect("write");
    base
}

#[test]
fn the_shipped_example_config_passes_the_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deputyd.toml");
    let (status, text) = check(&example);
    assert!(status.success(), "{text}");
    assert!(text.contains("is valid: 2 agent(s)"), "{text}");

    // The shipped unit validates the file before every reload, then signals.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/deputyd.service"),
    )
    .expect("unit");
    let reloads: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(reloads.len(), 2, "{unit}");
    assert!(reloads[0].contains("deputyd --check --config"), "{unit}");
    assert!(reloads[1].contains("kill -HUP $MAINPID"), "{unit}");
}

#[test]
fn every_registration_hole_is_reported_at_once_and_nothing_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(
        dir.path(),
        "[[agent]]\nname = \"triage\"\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
         selectors = [\"unix:uid:1001\"]\noutbound = \"127.0.0.1:0\"\nuids = [1001]\n\
         [[agent]]\nname = \"Billing\"\nspiffe_id = \"spiffe://example.org/agent/billing\"\n\
         outbound = \"127.0.0.1:0\"\nuids = [1001]\n\
         [[agent]]\nname = \"ops.eu\"\nspiffe_id = \"spiffe://example.org/agent/ops\"\n",
    );
    let (status, checked) = check(&config);
    assert_eq!(status.code(), Some(1), "{checked}");
    for expected in [
        "has 4 problem(s)",
        "agent[0] (\"triage\"): selector unix:uid:1001 is one a workload attestor emits",
        "could fetch the agent's SVID and key from the Workload API",
        "register the agent under deputy:agent:triage",
        "set workload_api_may_serve_key = true for this agent",
        "agent[1] (\"Billing\"): name must be non-empty lower-case",
        "write \"billing\"",
        "agent[1] (\"Billing\"): uid 1001 is also listed for agent \"triage\"",
        "agent[2] (\"ops.eu\"): name must be",
    ] {
        assert!(checked.contains(expected), "{checked}\nmissing: {expected}");
    }

    // Starting it says the same and exits; nothing is bound.
    let (status, started) = run(Command::new(binary("deputyd")).arg("--config").arg(&config));
    assert!(!status.success(), "{started}");
    assert!(
        started.contains("selector unix:uid:1001 is one a workload attestor emits"),
        "{started}"
    );
    assert!(!started.contains("deputyd started"), "{started}");
}

#[test]
fn a_broken_policy_fails_the_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(
        policy.join("broken.rego"),
        "package deputy.authz\ndecision := {\n",
    )
    .expect("write");
    let config = config_with(
        dir.path(),
        &format!("[policy]\ndir = \"{}\"\n", policy.display()),
    );
    let (status, text) = check(&config);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("the policy"), "{text}");
    assert!(text.contains("does not load"), "{text}");
}

#[test]
fn the_opt_in_keeps_a_workload_selector_registration_working() {
    // The old shape: the agent's entry selects it by uid, so the Workload API would serve it
    // to a process of that uid; the operator accepts that, by name, and deputyd still gets the
    // agent's SVID on the Delegated Identity API.
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &[], "1h", "1h");
    let mut entries = std::fs::read_to_string(dir.path().join("entries.toml")).expect("read");
    entries.push_str(
        "\n[[entry]]\nspiffe_id = \"spiffe://example.org/agent/legacy\"\n\
         selectors = [\"unix:uid:4321\"]\n",
    );
    std::fs::write(dir.path().join("entries.toml"), entries).expect("write");
    let _issuer = IssuerProcess::start(dir.path());
    let config = config_with(
        dir.path(),
        "[[agent]]\nname = \"legacy\"\nspiffe_id = \"spiffe://example.org/agent/legacy\"\n\
         selectors = [\"unix:uid:4321\"]\nworkload_api_may_serve_key = true\n",
    );
    let (status, text) = check(&config);
    assert!(status.success(), "{text}");
    assert!(
        text.contains("warning: agent legacy opted in to workload_api_may_serve_key"),
        "{text}"
    );

    let node = NodeProcess::start(&config);
    node.process
        .output
        .wait_for("workload_api_may_serve_key", Duration::from_secs(20));
    eventually("legacy's SVID arrives", Duration::from_secs(20), || {
        (node.identity("legacy")["state"] == "available").then_some(())
    });
}

#[test]
fn the_issuer_refuses_an_agent_registered_for_deputyd_and_for_the_workload_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = my_uid();
    std::fs::write(
        dir.path().join("entries.toml"),
        format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
             selectors = [\"deputy:agent:triage\"]\n\n\
             [[entry]]\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
             selectors = [\"unix:uid:1001\"]\n\n\
             [[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"
        ),
    )
    .expect("write");
    let (status, text) = run(Command::new(binary("deputy"))
        .arg("issuer")
        .args(["--trust-domain", "example.org"])
        .arg("--data-dir")
        .arg(dir.path().join("ca"))
        .arg("--workload-socket")
        .arg(dir.path().join("workload.sock"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .arg("--entries")
        .arg(dir.path().join("entries.toml")));
    assert!(!status.success(), "{text}");
    for expected in [
        "line 6: spiffe://example.org/agent/triage is registered both under deputy: selectors",
        "remove the entry at line 6",
    ] {
        assert!(text.contains(expected), "{text}\nmissing: {expected}");
    }
    assert!(!text.contains("issuer serving"), "{text}");
}

#[test]
fn a_service_cannot_shadow_a_local_agent_by_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(
        dir.path(),
        "[[agent]]\nname = \"triage\"\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
         [[service]]\nname = \"Triage\"\nspiffe_id = \"spiffe://example.org/agent/mallory\"\n\
         address = \"10.0.0.9:15008\"\n",
    );
    let (status, text) = check(&config);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("service[0] (\"Triage\"): a local agent has this name"),
        "{text}"
    );
}
