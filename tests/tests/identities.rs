//! deputyd and `deputy issuer` as real processes: identities arrive, rotate, survive the
//! issuer going away, and are withdrawn when they expire.

use std::time::Duration;

use deputy_tests::{
    IssuerProcess, NodeProcess, eventually, http_get, write_entries, write_node_config,
};

const AGENTS: [&str; 2] = ["triage", "billing"];

fn state(node: &NodeProcess, name: &str) -> String {
    node.identity(name)["state"]
        .as_str()
        .expect("state")
        .to_owned()
}

fn all_in_state(node: &NodeProcess, wanted: &str) -> bool {
    node.status()["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .all(|i| i["state"] == wanted)
}

#[test]
fn deputyd_gets_every_identity_and_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &AGENTS, "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let node = NodeProcess::start(&write_node_config(dir.path(), &AGENTS));

    eventually("readyz says ready", Duration::from_secs(20), || {
        http_get(&node.admin, "/readyz").filter(|(code, _)| *code == 200)
    });
    let status = node.status();
    assert_eq!(status["ready"], true);
    assert_eq!(status["trust_domain"], "example.org");
    assert_eq!(
        node.identity("deputyd")["spiffe_id"],
        "spiffe://example.org/deputyd/node1"
    );
    for agent in AGENTS {
        let identity = node.identity(agent);
        assert_eq!(identity["state"], "available", "{identity}");
        assert_eq!(
            identity["spiffe_id"],
            format!("spiffe://example.org/agent/{agent}")
        );
        assert!(identity["expires_in_seconds"].as_i64().expect("expiry") > 3500);
        assert!(
            identity["source"]
                .as_str()
                .expect("source")
                .contains("delegated_identity_api")
        );
    }
    let (code, metrics) = http_get(&node.admin, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "deputy_svid_expiry_timestamp_seconds{spiffe_id=\"spiffe://example.org/agent/triage\"}"
        ),
        "{metrics}"
    );
    assert_eq!(http_get(&node.admin, "/healthz").expect("healthz").0, 200);

    assert!(
        node.process.stop().success(),
        "SIGTERM stops deputyd cleanly"
    );
    assert!(issuer.process.stop().success());
}

#[test]
fn rotation_reaches_deputyd_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &AGENTS, "4s", "4s");
    let _issuer = IssuerProcess::start(dir.path());
    let node = NodeProcess::start(&write_node_config(dir.path(), &AGENTS));
    let first = eventually("triage has an SVID", Duration::from_secs(20), || {
        node.identity("triage")["serial"]
            .as_str()
            .map(str::to_owned)
    });
    let rotated = eventually(
        "a rotation reaches deputyd",
        Duration::from_secs(20),
        || {
            let identity = node.identity("triage");
            (identity["rotations"].as_u64() >= Some(1)).then_some(identity)
        },
    );
    assert_ne!(rotated["serial"].as_str(), Some(first.as_str()));
    assert_eq!(rotated["state"], "available");
    eventually(
        "deputyd's own SVID rotates too",
        Duration::from_secs(20),
        || (node.identity("deputyd")["rotations"].as_u64() >= Some(1)).then_some(()),
    );
    let (_, metrics) = http_get(&node.admin, "/metrics").expect("metrics");
    assert!(metrics.contains("deputy_svid_rotations_total"), "{metrics}");
}

#[test]
fn the_last_svid_keeps_serving_while_the_issuer_is_down_and_deputyd_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &AGENTS, "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let node = NodeProcess::start(&write_node_config(dir.path(), &AGENTS));
    eventually("all identities available", Duration::from_secs(20), || {
        all_in_state(&node, "available").then_some(())
    });

    assert!(issuer.process.stop().success());
    eventually(
        "every identity reports its source unavailable",
        Duration::from_secs(20),
        || all_in_state(&node, "source_unavailable").then_some(()),
    );
    let triage = node.identity("triage");
    assert!(
        triage["expires_in_seconds"].as_i64().expect("expiry") > 3000,
        "{triage}"
    );
    assert!(
        triage["last_error"].is_string(),
        "the error is reported: {triage}"
    );
    assert_eq!(
        http_get(&node.admin, "/readyz").expect("readyz").0,
        200,
        "a valid SVID keeps the node ready while the source is down"
    );

    // The issuer returns (same CA, from its data directory): deputyd reconnects by itself.
    let _issuer = IssuerProcess::start(dir.path());
    eventually(
        "every identity is available again",
        Duration::from_secs(30),
        || all_in_state(&node, "available").then_some(()),
    );
    assert_eq!(state(&node, "billing"), "available");
}

#[test]
fn an_svid_that_expires_with_the_issuer_down_is_withdrawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &AGENTS, "3s", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let node = NodeProcess::start(&write_node_config(dir.path(), &AGENTS));
    eventually("triage available", Duration::from_secs(20), || {
        (state(&node, "triage") == "available").then_some(())
    });
    assert!(issuer.process.stop().success());
    eventually("triage's SVID expires", Duration::from_secs(30), || {
        (state(&node, "triage") == "expired").then_some(())
    });
    let (code, body) = http_get(&node.admin, "/readyz").expect("readyz");
    assert_eq!(
        code, 503,
        "an expired identity makes the node unready: {body}"
    );
    assert!(body.contains("triage"), "{body}");
}

#[test]
fn an_agent_without_a_registration_entry_is_reported_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &["triage"], "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());
    let node = NodeProcess::start(&write_node_config(dir.path(), &AGENTS));
    eventually("triage available", Duration::from_secs(20), || {
        (state(&node, "triage") == "available").then_some(())
    });
    let billing = eventually(
        "billing reports why it has no SVID",
        Duration::from_secs(20),
        || {
            let identity = node.identity("billing");
            identity["last_error"].is_string().then_some(identity)
        },
    );
    assert_eq!(billing["state"], "initializing");
    assert!(
        billing["last_error"]
            .as_str()
            .expect("error")
            .contains("no registration entry matches"),
        "{billing}"
    );
    let (code, body) = http_get(&node.admin, "/readyz").expect("readyz");
    assert_eq!(code, 503);
    assert!(body.contains("billing"), "{body}");
}

#[test]
fn under_systemd_deputyd_notifies_ready_status_and_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &AGENTS, "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let config = write_node_config(dir.path(), &AGENTS);
    let node = deputy_tests::Process::spawn(
        std::process::Command::new(deputy_tests::binary("deputyd"))
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "2000000"),
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}); so far: {seen:?}\n{}",
                node.output.text()
            )
        });
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=3/3 identities available"), "{seen}");
    node.stop();
    let mut stopping = String::new();
    while let Ok(n) = notify.recv(&mut buf) {
        stopping.push_str(&String::from_utf8_lossy(&buf[..n]));
        if stopping.contains("STOPPING=1") {
            break;
        }
    }
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
}
