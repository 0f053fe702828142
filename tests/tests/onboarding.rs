//! Onboarding as a new user does it: `deputy agent add` writes what a new agent needs into a
//! running node's files, the issuer re-reads its entries, deputyd restarts, and the new agent's
//! first call goes through; a mistake writes nothing. `deputy doctor` passes a healthy node and
//! names what is wrong with a broken one, with the fix.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deputy_tests::mesh::{Node, demo_agent};
use deputy_tests::{
    IssuerProcess, binary, my_uid, node_config_head, run, unique_loopback_addr, write_entries,
};

/// A node fronting beta (served at `beta`), its inbound listener at `inbound`, with an operator
/// socket; its admin listener on `admin` (doctor reads it from the file). Returns the path.
fn node_config(dir: &Path, beta: &str, inbound: &str, admin: &str) -> std::path::PathBuf {
    let uid = my_uid();
    let text = node_config_head(dir)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""))
        + &format!(
            "[inbound]\nlisten = \"{inbound}\"\nallow_peers = [\"spiffe://example.org/agent/*\"]\n\
             [approvals]\nsocket = \"{}\"\noperators = [{uid}]\n\
             [[agent]]\nname = \"beta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\n\
             upstream = \"http://{beta}\"\n\
             [[service]]\nname = \"beta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\n\
             address = \"{inbound}\"\n",
            dir.join("operator.sock").display()
        );
    let path = dir.join("deputyd.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn deputy(args: &[&str]) -> (bool, String) {
    let (status, output) = run(Command::new(binary("deputy")).args(args));
    (status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_added_with_one_command_makes_its_first_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &["beta"], "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let (_beta, beta_addr) = demo_agent("beta", None);
    let inbound = unique_loopback_addr();
    let config = node_config(dir.path(), &beta_addr, &inbound, "127.0.0.1:0");
    let mut node = Node::start(&config);
    node.wait_ready();
    let entries = dir.path().join("entries.toml");
    let path = |p: &Path| p.display().to_string();

    // A mistake writes nothing: `deputy agent add` with `extra` arguments fails saying `says`,
    // and the configuration is as it was.
    let before = std::fs::read_to_string(&config).expect("config");
    let refused = |name: &str, extra: &[&str], says: &str| {
        let mut args = vec!["agent", "add", name, "--uid", "1234", "--config"];
        let config_path = path(&config);
        args.push(&config_path);
        args.extend_from_slice(extra);
        let (ok, output) = deputy(&args);
        assert!(!ok && output.contains(says), "{says:?} not in {output}");
        assert_eq!(std::fs::read_to_string(&config).expect("config"), before);
    };
    // An agent of that name exists.
    refused("beta", &[], "already has agent beta");
    // An address cannot smuggle settings into the stanza.
    refused(
        "newbie",
        &[
            "--upstream",
            "http://127.0.0.1:1\"\nworkload_api_may_serve_key = true\nx = \"",
        ],
        "no quotes",
    );
    // The policy's data names the services an agent may call: an unknown one writes nothing,
    // neither the data nor the configuration.
    let data = dir.path().join("data.json");
    std::fs::write(
        &data,
        r#"{"services": {"beta": {"callers": []}}, "originate": {}}"#,
    )
    .expect("data");
    refused(
        "newbie",
        &["--policy-data", &path(&data), "--calls", "gamma"],
        "has no service \"gamma\"",
    );

    // From here, what a new user does, timed.
    let started = Instant::now();
    let outbound = unique_loopback_addr();
    let uid = my_uid().to_string();
    let (ok, output) = deputy(&[
        "agent",
        "add",
        "newbie",
        "--uid",
        &uid,
        "--config",
        &path(&config),
        "--entries",
        &path(&entries),
        "--outbound",
        &outbound,
        "--vault-role-dir",
        &path(dir.path()),
        "--policy-data",
        &path(&data),
        "--calls",
        "beta",
        "--principals",
        "user:*",
    ]);
    assert!(ok, "{output}");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data).expect("data")).expect("JSON");
    assert_eq!(
        data["services"]["beta"]["callers"],
        serde_json::json!(["spiffe://example.org/agent/newbie"])
    );
    assert_eq!(
        data["originate"]["spiffe://example.org/agent/newbie"],
        serde_json::json!(["user:*"])
    );
    for says in [
        "Added agent newbie (spiffe://example.org/agent/newbie)",
        "[[agent]] newbie",
        "selector deputy:agent:newbie",
        "kill -HUP",
        "restart deputyd",
        "vault write auth/jwt/role/newbie",
    ] {
        assert!(output.contains(says), "{says:?} not in {output}");
    }
    let role: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("newbie.json")).expect("role"),
    )
    .expect("JSON");
    assert_eq!(role["bound_subject"], "spiffe://example.org/agent/newbie");

    // What it says to run next: the issuer re-reads its entries, deputyd restarts.
    issuer.process.signal(nix::sys::signal::Signal::SIGHUP);
    issuer
        .process
        .output
        .wait_for("entries reloaded", Duration::from_secs(10));
    node.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.process.wait(Duration::from_secs(30)).success());
    node = Node::start(&config);
    node.wait_ready();
    let response = deputy_tests::client::send(
        &outbound,
        deputy_tests::client::Protocol::Http1,
        deputy_tests::client::get("beta", "/first", deputy_tests::client::Protocol::Http1),
    )
    .await
    .expect("the first call");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = deputy_tests::client::json(response).await;
    assert_eq!(
        body["caller"], "spiffe://example.org/agent/newbie",
        "{body}"
    );
    // Commands a new user ran: agent add, the issuer's reload, deputyd's restart, the call.
    eprintln!(
        "onboarding: 4 commands, {:.2} s from `deputy agent add` to the first allowed call",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn doctor_passes_a_healthy_node_and_names_the_fix_for_a_broken_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &["beta"], "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let (_beta, beta_addr) = demo_agent("beta", None);
    let (inbound, admin) = (unique_loopback_addr(), unique_loopback_addr());
    let config = node_config(dir.path(), &beta_addr, &inbound, &admin);
    let mut node = Node::start(&config);
    node.wait_ready();
    let config = config.display().to_string();

    let (ok, output) = deputy(&["doctor", "--config", &config]);
    assert!(ok, "{output}");
    for says in [
        "ok    configuration loads (trust domain example.org, 1 agent(s))",
        "Workload API unix://",
        "ok    deputyd is ready",
        "ok    SVID of beta (spiffe://example.org/agent/beta) valid for",
        "ok    inbound mTLS listener",
        "ok    operator socket",
        "0 problem(s)",
    ] {
        assert!(output.contains(says), "{says:?} not in {output}");
    }
    // No policy is a warning, with what to do.
    assert!(output.contains("warn  no [policy]"), "{output}");

    // The issuer goes away: its socket is named, with the fix.
    drop(issuer);
    let (ok, output) = deputy(&["doctor", "--config", &config]);
    assert!(!ok, "{output}");
    assert!(
        output.contains("FAIL  Workload API") && output.contains("fix: start the SPIRE agent"),
        "{output}"
    );
    // deputyd stops: said, with where to look.
    node.process.signal(nix::sys::signal::Signal::SIGTERM);
    node.process.wait(Duration::from_secs(30));
    let (ok, output) = deputy(&["doctor", "--config", &config]);
    assert!(!ok, "{output}");
    assert!(
        output.contains("admin listener") && output.contains("does not answer"),
        "{output}"
    );
    // A configuration that does not load is the first thing said.
    std::fs::write(dir.path().join("broken.toml"), "trust_domain = 5\n").expect("write");
    let (ok, output) = deputy(&[
        "doctor",
        "--config",
        &dir.path().join("broken.toml").display().to_string(),
    ]);
    assert!(
        !ok && output.contains("FAIL  the configuration does not load"),
        "{output}"
    );
}
