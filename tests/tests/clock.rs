//! The clock of one node stepped forward and back past the delegation clock skew, and back to
//! the right time. node1 (alpha's node, which signs the links of alice's task) runs under
//! libfaketime (Debian's `libfaketime`, installed by `scripts/test`), whose offset the test
//! changes while deputyd runs: only node1's wall clock moves, as `date -s` or an NTP step moves a
//! real node's, while its monotonic clock (deputyd's timers) runs on.
//!
//! What callers see: each call is answered at once with node2's refusal naming the link and the
//! clocks, never a hang; node1's `/status` says its clock stepped and by how much; once the
//! clock is right again calls are served, with neither deputyd restarted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::{Process, binary, eventually, status_of};
use http::StatusCode;

/// libfaketime's library, where Debian's package puts it (any architecture).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|library| library.exists())
        .expect(
            "libfaketime is missing: scripts/test installs it (Debian: apt-get install \
             libfaketime)",
        )
}

/// What a call of beta for user:alice through alpha's outbound listener got: its status, its
/// problem (if any), and how long it took.
async fn call_beta(alpha: &str) -> (StatusCode, serde_json::Value, Duration) {
    let request = client::alice_calls_beta("/");
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(15),
        client::send(alpha, Protocol::Http1, request),
    )
    .await
    .expect("an answer within 15 s, not a hang")
    .expect("the call is answered");
    let status = response.status();
    let body = if status.is_success() {
        serde_json::Value::Null
    } else {
        client::json(response).await
    };
    (status, body, started.elapsed())
}

/// Three calls, each refused at once by node2 (`chain-rejected`) with a detail holding every
/// one of `words`.
async fn refused_promptly(alpha: &str, words: &[&str]) {
    for _ in 0..3 {
        let (status, body, took) = call_beta(alpha).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["type"], "urn:deputy:problem:chain-rejected", "{body}");
        let detail = body["detail"].as_str().expect("detail");
        assert!(words.iter().all(|w| detail.contains(w)), "{detail}");
        assert!(took < Duration::from_secs(5), "answered in {took:?}");
    }
}

/// Sets node1's wall clock to `offset` seconds from the true time, and waits until node1 has
/// seen `steps` steps in all; returns its `/status` clock.
fn step_clock(file: &Path, offset: &str, node1: &Node, steps: u64) -> serde_json::Value {
    set_offset(file, offset);
    eventually(
        &format!("node1's /status shows {steps} clock steps"),
        Duration::from_secs(10),
        || {
            let clock = status_of(&node1.admin)["clock"].clone();
            (clock["steps"] == steps).then_some(clock)
        },
    )
}

/// Writes the offset libfaketime reads, whole (a new file renamed over the old: a reader never
/// sees it empty or half written).
fn set_offset(file: &Path, offset: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, format!("{offset}\n")).expect("faketime offset");
    std::fs::rename(&next, file).expect("faketime offset in place");
}

/// The ids of node1's pooled connections of alpha.
fn pool_of_alpha(node1: &Node) -> Vec<u64> {
    let (_, text) = deputy_tests::http_get(&node1.admin, "/connections").expect("/connections");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    document["connections"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c["side"] == "pool" && c["agent"] == "alpha")
        .map(|c| c["id"].as_u64().expect("id"))
        .collect()
}

/// node1's wall clock minus node2's, from their `/status`, in seconds.
fn clocks_apart(node1: &Node, node2: &Node) -> i64 {
    let now = |node: &Node| {
        let text = status_of(&node.admin)["clock"]["now"]
            .as_str()
            .expect("now")
            .to_owned();
        humantime::parse_rfc3339(&text).expect("RFC 3339")
    };
    let (one, two) = (now(node1), now(node2));
    match one.duration_since(two) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_past_the_skew_gets_prompt_refusals_naming_it_and_recovers_when_set_right()
{
    let mut mesh = Mesh::start("1h");
    // node1 again, now with a wall clock the test can step. The offset file is in node1's state
    // directory, which deputyd's sandbox lets it read.
    let state = mesh.dir.path().join("state-node1");
    let offset = state.join("faketime");
    set_offset(&offset, "+0");
    mesh.node1.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(mesh.node1.process.wait(Duration::from_secs(15)).success());
    mesh.node1 = Node::of(Process::spawn(
        Command::new(binary("deputyd"))
            .arg("--config")
            .arg(mesh.dir.path().join("node1.toml"))
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ));
    mesh.node1.wait_ready();
    let (node1_pid, node2_pid) = (mesh.node1.process.pid(), mesh.node2.process.pid());
    let alpha = mesh.node1.outbound_of("alpha");

    let (status, body, _) = call_beta(&alpha).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of(&mesh.node1.admin)["clock"]["steps"], 0);

    // Forward by 90 s, three times the 30 s skew: node1's links are issued in node2's future.
    let clock = step_clock(&offset, "+90", &mesh.node1, 1);
    let seconds = clock["last_step"]["seconds"].as_f64().expect("seconds");
    assert!((85.0..95.0).contains(&seconds), "{clock}");
    let apart = clocks_apart(&mesh.node1, &mesh.node2);
    assert!(
        (85..=95).contains(&apart),
        "the two /status differ by {apart} s"
    );
    refused_promptly(
        &alpha,
        &["in the future by the verifying node's clock", "/status"],
    )
    .await;
    assert_eq!(status_of(&mesh.node2.admin)["clock"]["steps"], 0);

    // Back by 990 s, to 15 minutes behind: the links node1 signs for 10 minutes have expired
    // by node2's clock when they arrive. (They go over the connection node1 opened before: by
    // a clock 15 minutes behind, node2's SVID, issued minutes ago, is not valid yet, and a new
    // connection would be refused at its handshake, a 502 rather than node2's refusal.)
    let pooled = pool_of_alpha(&mesh.node1);
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    let clock = step_clock(&offset, "-900", &mesh.node1, 2);
    let seconds = clock["last_step"]["seconds"].as_f64().expect("seconds");
    assert!((-995.0..-985.0).contains(&seconds), "{clock}");
    refused_promptly(&alpha, &["expired", "the verifying node differ"]).await;

    assert_eq!(pool_of_alpha(&mesh.node1), pooled, "the same connection");

    // Set right: served again, by the same two processes.
    step_clock(&offset, "+0", &mesh.node1, 3);
    let (status, body, _) = call_beta(&alpha).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(mesh.node1.process.pid(), node1_pid);
    assert_eq!(mesh.node2.process.pid(), node2_pid);
    assert!(mesh.node1.process.is_running() && mesh.node2.process.is_running());
    let log = mesh.node1.process.output.text();
    assert!(
        log.contains("the wall clock stepped past the delegation clock skew"),
        "{log}"
    );
    assert!(
        mesh.node1.metrics().contains("deputy_clock_steps_total 3"),
        "{}",
        mesh.node1.metrics()
    );
}
