//! The soak: calls at a fixed rate along a chain (user:alice -> alpha -> beta -> carol, the
//! shipped policy deciding at every hop, both nodes crossed twice) while the agents' SVIDs
//! rotate, and beside it a third deputyd whose agent's Vault leases renew all along (a
//! database user of 12 s leases, read through the PostgreSQL auth proxy over one session kept
//! open, and a KV secret injected into calls, every second), watching what must stay flat in
//! the three deputyd processes: memory, open files and connections, and failures (none).
//!
//! CI runs two minutes. The long run, whose numbers go in the notes:
//! `DEPUTY_SOAK_SECONDS=1800 cargo test -p deputy-tests --test soak -- --nocapture`.

use std::time::Duration;

use deputy_tests::Process;
use deputy_tests::client::{self, Protocol};
use deputy_tests::policed::{call, policed_mesh_rotating, task, with_task};
use deputy_tests::secrets_setup::{Setup, names, node_field, proxy_session, secret, secret_status};
use http::{Method, StatusCode};

/// Calls per second.
const RATE: u64 = 40;
/// Agent SVIDs live this long, and are rotated at half of it.
const AGENT_TTL: &str = "30s";
/// The secrets node's database leases live this long, and are renewed at about two thirds.
const LEASE_TTL: u64 = 12;

/// What is watched in one deputyd.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// What the process allocated (the heap, stacks), without the mapped pages of its
    /// program and libraries, which grow as code paths run for the first time.
    anon_kib: u64,
    /// What deputyd holds allocated, as its allocator counts it (`/metrics`): flat unless
    /// something leaks, whatever the allocator keeps of what was freed.
    allocated_kib: u64,
    open_files: usize,
    connections: usize,
}

fn sample(process: &Process, admin: &str) -> Sample {
    let pid = process.pid().as_raw();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    let (rss_kib, anon_kib) = (field("VmRSS:"), field("RssAnon:"));
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let (_, metrics) = deputy_tests::http_get(admin, "/metrics").expect("/metrics");
    let allocated = deputy_tests::metric(&metrics, "deputy_memory_allocated_bytes ");
    assert!(allocated > 0.0, "deputy_memory_allocated_bytes in /metrics");
    let allocated_kib = allocated as u64 / 1024;
    let (_, text) = deputy_tests::http_get(admin, "/connections").expect("/connections");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let connections = document["connections"].as_array().map_or(0, Vec::len);
    Sample {
        rss_kib,
        anon_kib,
        allocated_kib,
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

fn rotations(admin: &str, agent: &str) -> u64 {
    deputy_tests::identity_of(admin, agent)["rotations"]
        .as_u64()
        .expect("rotations")
}

/// Requests a node sent again because a pooled connection closed before they were written.
fn resent(admin: &str) -> u64 {
    let (_, metrics) = deputy_tests::http_get(admin, "/metrics").expect("/metrics");
    deputy_tests::metric(&metrics, "deputy_requests_resent_total") as u64
}

/// alpha's database lease on the secrets node: its renewals, and its generation (1 while the
/// first lease is the one renewed).
fn lease(admin: &str) -> (u64, u64) {
    let status = secret_status(admin, "alpha");
    let db = secret(&status, "db");
    (
        db["renewals"].as_u64().expect("renewals"),
        db["generation"].as_u64().expect("generation"),
    )
}

/// One second's use of the secrets node's leases: a query over the session opened before the
/// soak (its user's lease renewed under it), and a call carrying the injected KV secret.
async fn use_secrets(
    session: std::sync::Arc<tokio_postgres::Client>,
    alpha: String,
) -> Result<(), String> {
    let rows = names(&session)
        .await
        .map_err(|e| format!("the database session failed: {e}"))?;
    if rows != ["one"] {
        return Err(format!("the database answered {rows:?}"));
    }
    let call = client::get("echo", "/tickets", Protocol::Http1);
    match client::send(&alpha, Protocol::Http1, call).await {
        Ok(response) if response.status() == StatusCode::OK => Ok(()),
        Ok(response) => Err(format!(
            "a call with the injected secret: {}",
            response.status()
        )),
        Err(e) => Err(format!("a call with the injected secret: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_a_fixed_rate_while_svids_rotate_leave_memory_files_and_connections_flat() {
    let seconds: u64 = std::env::var("DEPUTY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    // The bounded caches fill within seconds, not minutes, so that what the soak sees after
    // its warm-up is the steady state: each new task keeps its context (a few KiB) until
    // `max_contexts` newer ones push it out (16,384 by default), and the nodes it went on to
    // until `max_relayed_tasks` newer ones do (8,192, which take 3.5 minutes to fill here).
    let small = "[delegation]\nmax_contexts = 256\nmax_relayed_tasks = 256\n";
    let (mesh, _dir, _policy) = policed_mesh_rotating(false, (small, small), AGENT_TTL);
    let alpha = mesh.node1.outbound_of("alpha");
    let rotated_before = rotations(&mesh.node1.admin, "alpha");
    let secrets = Setup::start_with(&format!("{LEASE_TTL}s"), AGENT_TTL);
    secrets.alpha_ready("soak-crm-token-3f9a1c");
    let session = proxy_session(&node_field(
        &secrets.node,
        "PostgreSQL proxy bound",
        "postgres=",
    ))
    .await
    .expect("a session through the PostgreSQL proxy");
    let session = std::sync::Arc::new(session);
    let secrets_alpha = secrets.node.outbound("alpha");
    let (renewals_before, _) = lease(&secrets.node.admin);
    let nodes = [
        ("node1", &mesh.node1.process, mesh.node1.admin.as_str()),
        ("node2", &mesh.node2.process, mesh.node2.admin.as_str()),
        (
            "secrets",
            &secrets.node.process,
            secrets.node.admin.as_str(),
        ),
    ];
    // Blocking reads, off the runtime's two workers' queues: the calls go on meanwhile.
    let sample_all =
        || tokio::task::block_in_place(|| nodes.map(|(_, process, admin)| sample(process, admin)));

    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The readings compared: after the warm-up (caches, pools and the allocator settle) and at
    // the end, each taken with no call in flight, so that they count what stays.
    let warm_tick = seconds * RATE / 5;
    let mut settled: Vec<[Sample; 3]> = Vec::new();
    for tick in 0..seconds * RATE {
        pace.tick().await;
        if tick == warm_tick {
            finish(&mut calls).await;
            settled.push(sample_all());
        }
        if tick % (5 * RATE) == 0 {
            let [one, two, three] = sample_all();
            eprintln!(
                "{:>5} s  node1 {one:?}  node2 {two:?}  secrets {three:?}",
                tick / RATE
            );
        }
        if tick % RATE == 0 {
            calls.spawn(use_secrets(session.clone(), secrets_alpha.clone()));
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
    settled.push(sample_all());
    let total = seconds * RATE;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let rotated = rotations(&mesh.node1.admin, "alpha") - rotated_before;
    assert!(
        rotated >= seconds / 30,
        "alpha's SVID rotated {rotated} times in {seconds} s"
    );
    // Renewed about every 8 s, the first lease all along (never issued anew).
    let (renewals, generation) = lease(&secrets.node.admin);
    let renewed = renewals - renewals_before;
    assert!(
        renewed >= seconds / LEASE_TTL,
        "alpha's database lease was renewed {renewed} times in {seconds} s"
    );
    assert_eq!(generation, 1, "the lease was issued anew, not renewed");

    // Flat: connections (the registry's, with nothing in flight) within a few; open files
    // within a pool's worth (deputyd's clients to its agents keep idle connections as many as
    // the busiest moment needed); memory as below.
    let [first, last] = settled[..] else {
        unreachable!("two settled readings")
    };
    for (((node, _, _), first), last) in nodes.iter().zip(first).zip(last) {
        eprintln!("{node}: {first:?} -> {last:?}");
        assert!(
            last.open_files <= first.open_files + 16,
            "{node}'s open files grew: {first:?} -> {last:?}"
        );
        assert!(
            last.connections <= first.connections + 4,
            "{node}'s connections grew: {first:?} -> {last:?}"
        );
        // What deputyd holds: flat but for the caches still filling after the warm-up (the
        // chains verified, 4,096, a few MiB at most). A leak of 1.4 KiB a call fails the
        // two-minute run (3,840 calls after the warm-up), of 100 bytes the 30-minute one.
        assert!(
            last.allocated_kib <= first.allocated_kib + first.allocated_kib / 10 + 4 * 1024,
            "{node}'s allocated memory grew: {first:?} -> {last:?}"
        );
        // What the system sees: the allocator keeps some of what was freed for a while.
        assert!(
            last.rss_kib <= first.rss_kib + first.rss_kib / 4 + 8 * 1024
                && last.anon_kib <= first.anon_kib + first.anon_kib / 4 + 16 * 1024,
            "{node}'s memory grew: {first:?} -> {last:?}"
        );
    }
    eprintln!(
        "{total} calls at {rate:.1} a second, none failed; alpha's SVID rotated {rotated} times; \
         its lease renewed {renewed} times; requests sent again: node1 {}, node2 {}",
        resent(&mesh.node1.admin),
        resent(&mesh.node2.admin)
    );
    // No value Vault issued in any log of the secrets node's run (nor in its audit trail).
    drop(session);
    secrets.stop_and_check_logs();
}
