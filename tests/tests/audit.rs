//! The audit trail through real deputyd processes: a task that crosses three nodes
//! (tests/src/chain.rs) leaves a record at every end it passed, which `deputy audit query
//! --task` joins across the nodes' trails; each trail verifies, and a tampered copy is named
//! at its first bad record.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deputy_tests::chain::{Chain, agent_id};
use deputy_tests::{binary, run};
use http::StatusCode;

const ALICE: &str = "user:alice@example.org";

/// `deputy audit ARGS`: whether it succeeded, and its output.
fn audit(args: &[&str], dirs: &[&Path]) -> (bool, String) {
    let (status, output) = run(Command::new(binary("deputy"))
        .arg("audit")
        .args(args)
        .args(dirs));
    (status.success(), output)
}

fn trail_of(chain: &Chain, node: &str) -> PathBuf {
    chain.dir.path().join(format!("state-{node}/audit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_across_three_nodes_is_recorded_at_every_end_and_joined_by_query() {
    let chain = Chain::start();
    let context = chain.b_context(ALICE, "t-audit").await;
    let response = chain.b_calls_c(&context, "/report").await;
    assert_eq!(response.status(), StatusCode::OK);
    // Another task, which the query must leave out.
    chain.b_context("user:bob@example.org", "t-other").await;

    let trails = ["a", "b", "c"].map(|n| trail_of(&chain, n));
    let dirs: Vec<&Path> = trails.iter().map(PathBuf::as_path).collect();
    let (ok, out) = audit(&["query", "--task", "t-audit", "--json"], &dirs);
    assert!(ok, "{out}");
    let found: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let mut ends: Vec<(String, String, String)> = found
        .iter()
        .map(|f| {
            let r = &f["record"];
            let node = f["trail"].as_str().expect("trail");
            let node = node.rsplit("state-").next().expect("node")[..1].to_owned();
            let who = if r["direction"] == "inbound" {
                &r["peer"]
            } else {
                &r["agent"]
            };
            (
                node,
                r["direction"].as_str().expect("direction").to_owned(),
                who.as_str().expect("who").to_owned(),
            )
        })
        .collect();
    // Every end the task passed, each on its own node: a called b, b was called (by a's
    // SPIFFE ID), b called c, c was called by b. (An end is recorded as it answers, so the
    // inner ends come first in time.)
    ends.sort();
    assert_eq!(
        ends,
        [
            ("a".into(), "outbound".into(), "a".into()),
            ("b".into(), "inbound".into(), agent_id("a")),
            ("b".into(), "outbound".into(), "b".into()),
            ("c".into(), "inbound".into(), agent_id("b")),
        ],
        "{out}"
    );
    for f in &found {
        let r = &f["record"];
        assert_eq!(
            (r["principal"].as_str(), r["status"].as_u64()),
            (Some(ALICE), Some(200)),
            "{r}"
        );
        assert_eq!(r["originator"], agent_id("a"), "{r}");
    }
    // The two ends of each hop share the call's id; c's end knows the whole chain.
    let mut ids: Vec<&str> = found
        .iter()
        .map(|f| f["record"]["request_id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two hops, each recorded at both ends: {out}");
    let at_c = found
        .iter()
        .find(|f| f["record"]["agent"] == "c")
        .expect("c's end");
    assert_eq!(
        at_c["record"]["actors"],
        serde_json::json!([agent_id("a"), agent_id("b"), agent_id("c")])
    );
    let (ok, table) = audit(&["query", "--task", "t-audit"], &dirs);
    assert!(
        ok && table.lines().count() == 4 && table.contains("/report"),
        "{table}"
    );

    // Each node recorded its own identities as they came (its own SVID and its agent's).
    for (trail, agent) in trails.iter().zip(["a", "b", "c"]) {
        let text = std::fs::read_to_string(trail.join("audit.jsonl")).expect("trail");
        for name in ["deputyd", agent] {
            assert!(
                text.lines().any(|l| l.contains("\"type\":\"identity\"")
                    && l.contains(&format!("\"name\":\"{name}\""))),
                "no identity record of {name}: {text}"
            );
        }
    }

    // Stopped, each node signs a last checkpoint: every trail is whole, and vouched for to its
    // end by its node's SVID; a copy with one record changed is named at the record after it.
    let mut chain = chain;
    for node in &mut chain.nodes {
        node.process.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(node.process.wait(Duration::from_secs(30)).success());
    }
    let bundle = chain.dir.path().join("ca/ca.pem");
    let bundle = bundle.to_str().expect("path");
    for dir in &dirs {
        let (ok, out) = audit(
            &[
                "verify",
                "--bundle",
                bundle,
                "--trust-domain",
                "example.org",
            ],
            &[dir],
        );
        assert!(
            ok && out.starts_with("whole")
                && out.contains("signatures valid (signed by spiffe://example.org/deputyd/")
                && out.contains("the last 0 record(s)"),
            "{out}"
        );
    }
    let copy = chain.dir.path().join("tampered");
    std::fs::create_dir_all(&copy).expect("dir");
    let text = std::fs::read_to_string(trails[1].join("audit.jsonl")).expect("b's trail");
    let tampered = text.replacen("\"status\":200", "\"status\":403", 1);
    assert_ne!(tampered, text);
    std::fs::write(copy.join("audit.jsonl"), tampered).expect("write");
    let (ok, out) = audit(&["verify"], &[&copy]);
    assert!(
        !ok && out.contains("NOT WHOLE") && out.contains("was changed"),
        "{out}"
    );
}
