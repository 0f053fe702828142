//! The soak: calls at a fixed rate along a chain (user:alice -> alpha -> beta -> carol, the
//! shipped policy deciding at every hop, both nodes crossed twice) while the agents' SVIDs
//! rotate, watching what must stay flat in both deputyd processes: memory, open files and
//! connections, and failures (none).
//!
//! CI runs two minutes. The long run, whose numbers go in the notes:
//! `DEPUTY_SOAK_SECONDS=1800 cargo test -p deputy-tests --test soak -- --nocapture`.

use std::time::Duration;

use deputy_tests::mesh::Node;
use deputy_tests::policed::{call, policed_mesh_rotating, task, with_task};
use http::{Method, StatusCode};

/// Calls per second.
const RATE: u64 = 40;
/// Agent SVIDs live this long, and are rotated at half of it.
const AGENT_TTL: &str = "30s";

/// What is watched in one deputyd.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    open_files: usize,
    connections: usize,
}

fn sample(node: &Node) -> Sample {
    let pid = node.process.pid().as_raw();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let (_, text) = deputy_tests::http_get(&node.admin, "/connections").expect("/connections");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let connections = document["connections"].as_array().map_or(0, Vec::len);
    Sample {
        rss_kib,
        open_files,
        connections,
    }
}

/// Waits for every call in flight; panics with the first failure.
async fn finish(calls: &mut tokio::task::JoinSet<Result<(), String>>) {
    while let Some(done) = calls.join_next().await {
        if let Err(failure) = done.expect("call task") {
            panic!("a call failed: {failure}");
        }
    }
}

fn rotations(node: &Node, agent: &str) -> u64 {
    deputy_tests::identity_of(&node.admin, agent)["rotations"]
        .as_u64()
        .expect("rotations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_a_fixed_rate_while_svids_rotate_leave_memory_files_and_connections_flat() {
    let seconds: u64 = std::env::var("DEPUTY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    // The bounded caches fill within seconds, not minutes, so that what the soak sees after
    // its warm-up is the steady state: each new task keeps its context (a few KiB) until
    // `max_contexts` newer ones push it out, 16,384 by default.
    let small = "[delegation]\nmax_contexts = 256\n";
    let (mesh, _dir, _policy) = policed_mesh_rotating(false, (small, small), AGENT_TTL);
    let alpha = mesh.node1.outbound_of("alpha");
    let rotated_before = rotations(&mesh.node1, "alpha");

    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The readings compared: after the warm-up (caches, pools and the allocator settle) and at
    // the end, each taken with no call in flight, so that they count what stays.
    let warm_tick = seconds * RATE / 5;
    let mut settled: Vec<(Sample, Sample)> = Vec::new();
    for tick in 0..seconds * RATE {
        pace.tick().await;
        if tick == warm_tick {
            finish(&mut calls).await;
            settled.push((sample(&mesh.node1), sample(&mesh.node2)));
        }
        if tick % (5 * RATE) == 0 {
            let (one, two) = (sample(&mesh.node1), sample(&mesh.node2));
            eprintln!("{:>5} s  node1 {one:?}  node2 {two:?}", tick / RATE);
        }
        let alpha = alpha.clone();
        calls.spawn(async move {
            let alice = task("user:alice@example.org");
            let headers = with_task(&alice);
            let called = call(
                &alpha,
                Method::GET,
                "/relay?to=carol&path=/tickets",
                &headers,
                b"",
            );
            match tokio::time::timeout(Duration::from_secs(15), called).await {
                Ok((StatusCode::OK, body)) if body["status"] == 200 => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {body}")),
                Err(_) => Err("no answer within 15 s".to_owned()),
            }
        });
        // Finished calls are collected as they come, so that a failure stops the soak early.
        while let Some(done) = calls.try_join_next() {
            if let Err(failure) = done.expect("call task") {
                panic!("a call failed after {tick} calls: {failure}");
            }
        }
    }
    finish(&mut calls).await;
    settled.push((sample(&mesh.node1), sample(&mesh.node2)));
    let total = seconds * RATE;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let rotated = rotations(&mesh.node1, "alpha") - rotated_before;
    assert!(
        rotated >= seconds / 30,
        "alpha's SVID rotated {rotated} times in {seconds} s"
    );

    // Flat: connections (the registry's, with nothing in flight) within a few; open files
    // within a pool's worth (deputyd's clients to its agents keep idle connections as many as
    // the busiest moment needed); memory within a quarter and 8 MiB.
    let [(first1, first2), (last1, last2)] = settled[..] else {
        unreachable!("two settled readings")
    };
    for (node, first, last) in [("node1", first1, last1), ("node2", first2, last2)] {
        eprintln!("{node}: {first:?} -> {last:?}");
        assert!(
            last.open_files <= first.open_files + 16,
            "{node}'s open files grew: {first:?} -> {last:?}"
        );
        assert!(
            last.connections <= first.connections + 4,
            "{node}'s connections grew: {first:?} -> {last:?}"
        );
        assert!(
            last.rss_kib <= first.rss_kib + first.rss_kib / 4 + 8 * 1024,
            "{node}'s memory grew: {first:?} -> {last:?}"
        );
    }
    eprintln!(
        "{total} calls at {rate:.1} a second, none failed; alpha's SVID rotated {rotated} times"
    );
}
