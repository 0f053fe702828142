//! Faults across processes: what a caller sees when a part of the mesh dies under it (a
//! problem or a visibly broken stream, never a hang or a stream that looks finished), and that
//! the mesh recovers by itself once the part is back. (The issuer, SPIRE agent, Vault, a full
//! audit disk, a kill -9 of deputyd and a broken policy have their own tests: identities.rs,
//! spire.rs, secrets.rs, audit_faults.rs, policy.rs.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, demo_agent_at};
use deputy_tests::policed::{call, policed_mesh, policy_status, task, with_task};
use deputy_tests::secrets_setup::{Setup, names, node_field, proxy_session, secret, secret_status};
use deputy_tests::sse::{first_event, read_events};
use http::StatusCode;
use hyper::body::Incoming;

/// A call of beta for user:alice through alpha's outbound listener.
async fn call_beta(alpha: &str, path: &str) -> http::Response<Incoming> {
    let request = client::alice_calls_beta(path);
    tokio::time::timeout(
        Duration::from_secs(15),
        client::send(alpha, Protocol::Http1, request),
    )
    .await
    .expect("an answer within 15 s, not a hang")
    .expect("the call is answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_stream_breaks_the_stream_visibly_and_is_served_again_once_back() {
    let mut mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let beta_outbound = mesh.node2.outbound_of("beta");

    // A stream of 60 s of events from beta, open end to end (alpha -> node1 -> node2 -> beta).
    let response = call_beta(&alpha, "/events?count=600").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    first_event(&mut stream).await;

    // beta's process dies (SIGKILL: no goodbye on its connection).
    let index = mesh
        .agents
        .iter()
        .position(|(name, _, _)| name == "beta")
        .expect("beta");
    let (_, beta, beta_addr) = mesh.agents.remove(index);
    drop(beta);
    let killed = Instant::now();

    // The caller's stream ends at once, and as broken: a client must not take a cut stream for
    // a whole one.
    let (_, clean) = tokio::time::timeout(Duration::from_secs(10), read_events(&mut stream))
        .await
        .expect("the stream ends within 10 s of the kill, it does not hang");
    assert!(!clean, "a stream cut upstream ended as if it were complete");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "the stream ended {:?} after the kill",
        killed.elapsed()
    );

    // The next call is refused at once, by a problem that names the upstream.
    let refused = call_beta(&alpha, "/").await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let problem = client::json(refused).await;
    assert_eq!(
        problem["type"], "urn:deputy:problem:upstream-unavailable",
        "{problem}"
    );
    // It says what failed and what to check: beta's upstream, at beta's node.
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("agent beta did not answer at its upstream")
                && d.contains("is it running?")),
        "{problem}"
    );
    // beta's node logged the refused call (its log is written off the request path: waited
    // for; no call before this one was refused).
    let line = mesh
        .node2
        .process
        .output
        .wait_for("status=502", Duration::from_secs(10));
    assert!(line.contains("deputy::access"), "{line}");

    // beta is back where it was: calls are served again, with no restart of either deputyd.
    let (_beta_again, _) = demo_agent_at("beta", &beta_addr, Some(&beta_outbound));
    let served = call_beta(&alpha, "/").await;
    assert_eq!(served.status(), StatusCode::OK);
    let stream = call_beta(&alpha, "/events?count=3").await;
    let (seen, clean) = read_events(&mut stream.into_body()).await;
    assert!(clean && seen == 3, "a whole stream again: {seen} events");
    assert!(mesh.node1.process.is_running() && mesh.node2.process.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_the_auth_proxy_ends_its_sessions_and_new_ones_log_in_again() {
    let mut setup = Setup::start("10m");
    let ready = setup.alpha_ready("crm-token-unused-here");
    assert!(secret(&ready, "db")["expires_at"].is_string(), "{ready}");
    let proxy = node_field(&setup.node, "PostgreSQL proxy bound", "postgres=");
    let session = proxy_session(&proxy).await.expect("a session");
    assert_eq!(names(&session).await.expect("SELECT"), ["one"]);

    setup.pg.restart();

    // The session the restart ended fails as the server's end, promptly, not by a hang.
    let ended = tokio::time::timeout(Duration::from_secs(15), names(&session))
        .await
        .expect("an answer within 15 s");
    assert!(ended.is_err(), "a session survived the server's restart");
    // New sessions log in again through the proxy, on the same credential (the server kept
    // its users): nothing to restart, nothing to reissue.
    let fresh = tokio::time::timeout(Duration::from_secs(15), proxy_session(&proxy))
        .await
        .expect("an answer within 15 s")
        .expect("a new session after the restart");
    assert_eq!(names(&fresh).await.expect("SELECT"), ["one"]);
    let status = secret_status(&setup.node.admin, "alpha");
    assert_eq!(secret(&status, "db")["generation"], 1, "{status}");
    assert!(setup.node.process.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_corrupted_under_load_fails_no_call_and_the_next_good_one_serves() {
    let (mesh, _dir, policy) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let status_of = || policy_status(&mesh.node1.admin);
    let before = status_of();

    // Three callers, one call after another, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (alpha, stop, answered) = (alpha.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let alice = task("user:alice@example.org");
                let mut failed = Vec::new();
                // Bounded: the callers end by themselves.
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let headers = with_task(&alice);
                    let called = call(&alpha, http::Method::GET, "/", &headers, b"");
                    match tokio::time::timeout(Duration::from_secs(15), called).await {
                        Ok((http::StatusCode::OK, _)) => {}
                        Ok((status, body)) => failed.push(format!("{status}: {body}")),
                        Err(_) => failed.push("no answer within 15 s".to_owned()),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                failed
            })
        })
        .collect();
    // Waits until the callers have made `more` calls beyond those made now.
    let calls_go_on = |more: usize| {
        let target = answered.load(Ordering::Relaxed) + more;
        deputy_tests::eventually("calls go on", Duration::from_secs(30), || {
            (answered.load(Ordering::Relaxed) >= target).then_some(())
        });
    };

    // Writers that die mid-write leave the policy's data cut short, and an editor leaves a
    // rule half-typed: each is seen by the watcher (every 200 ms), reported, and not used.
    let data = policy.join("data.json");
    let good = std::fs::read(&data).expect("data.json");
    let broken: [(&str, Vec<u8>); 3] = [
        ("data.json", good[..good.len() / 2].to_vec()),
        ("data.json", b"{".to_vec()),
        (
            "half.rego",
            b"package deputy.authz\nimport rego.v1\ndeny contains msg if {".to_vec(),
        ),
    ];
    for (file, contents) in broken {
        std::fs::write(policy.join(file), &contents).expect("write");
        let failed =
            deputy_tests::eventually("the broken file is seen", Duration::from_secs(10), || {
                let status = status_of();
                status["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(file))
                    .then_some(status)
            });
        assert_eq!(
            failed["revision"], before["revision"],
            "the last good policy serves"
        );
        // ... to calls made while the broken file is there.
        calls_go_on(10);
        if file == "half.rego" {
            std::fs::remove_file(policy.join(file)).expect("remove");
        } else {
            std::fs::write(&data, &good).expect("write");
        }
        deputy_tests::eventually(
            "the good files serve again",
            Duration::from_secs(10),
            || status_of()["last_error"].is_null().then_some(()),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let failed = caller.await.expect("caller");
        assert!(
            failed.is_empty(),
            "calls failed while the policy was broken: {failed:#?}"
        );
    }
}
