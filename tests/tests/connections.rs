//! The connection registry through real deputyd processes: connections drained when their
//! admission lapses (SVID expiry, agent removed), on SIGTERM within the grace, bounded
//! handshakes, connection and stream limits, and `/connections`.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::sse::{first_event, next_event, read_events};
use deputy_tests::{audit_records, eventually, http_get};
use http::StatusCode;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// The open connections `node` lists.
fn connections(node: &Node) -> Vec<serde_json::Value> {
    let (status, text) = http_get(&node.admin, "/connections").expect("/connections");
    assert_eq!(status, 200, "{text}");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    document["connections"].as_array().expect("a list").clone()
}

/// A stream of `count` events (100 ms apart) from beta, called by alpha for `user:alice`.
async fn events(mesh: &Mesh, count: u32) -> Incoming {
    let request = client::alice_calls_beta(&format!("/events?count={count}"));
    let response = client::send(&mesh.node1.outbound_of("alpha"), Protocol::Http1, request)
        .await
        .expect("call");
    if response.status() != StatusCode::OK {
        panic!("{}: {}", response.status(), client::json(response).await);
    }
    response.into_body()
}

/// Asserts that `response` is a 503 `overloaded` problem naming `limit`.
async fn refused_over(response: http::Response<Incoming>, limit: &str) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = client::json(response).await;
    assert_eq!(
        problem["type"], "urn:deputy:problem:overloaded",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains(limit)),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_is_closed_soon_after_the_svid_it_was_admitted_on_expires() {
    let limits = "[limits]\ndrain_grace = \"1s\"\n";
    let mesh = Mesh::start_configured("6s", None, (limits, limits));
    let mut body = events(&mesh, 600).await;
    first_event(&mut body).await;
    let opened = Instant::now();
    // No rotation source: the SVIDs the connections were made with are the last ones.
    let Mesh {
        issuer,
        node1,
        node2,
        agents: _agents,
        dir: _dir,
    } = mesh;
    drop(issuer);

    let (seen, clean) = read_events(&mut body).await;
    let took = opened.elapsed();
    assert!(
        !clean && seen < 150,
        "the 60 s stream was cut, not finished: {seen} events, clean: {clean}"
    );
    // The SVID lives 6 s from issue, checks run every 0.5 s, the grace is 1 s.
    assert!(
        took < Duration::from_secs(12),
        "cut {took:?} after it opened"
    );
    let logs = node1.process.output.text() + &node2.process.output.text();
    assert!(
        logs.contains("draining connection")
            && (logs.contains("the SVID this node presented expired")
                || logs.contains("the peer's SVID expired")),
        "the drain and its reason are logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_streaming_call_finish_within_the_grace_then_exits_0() {
    let limits = "[limits]\ndrain_grace = \"5s\"\n";
    let mut mesh = Mesh::start_configured("1h", None, (limits, limits));
    let mut short = events(&mesh, 20).await; // 2 s
    let mut long = events(&mesh, 600).await; // 60 s: outlives the grace
    first_event(&mut short).await;
    first_event(&mut long).await;
    mesh.node1.process.signal(nix::sys::signal::Signal::SIGTERM);
    let stopping = Instant::now();

    let (seen, clean) = read_events(&mut short).await;
    assert!(
        clean && seen == 19,
        "the short stream finished: {seen} more events"
    );
    // Draining: the listener accepts no new caller.
    let refused = client::send(
        &mesh.node1.outbound_of("alpha"),
        Protocol::Http1,
        client::get("beta", "/", Protocol::Http1),
    )
    .await;
    assert!(refused.is_err(), "a new call while stopping: {refused:?}");

    let (_, clean) = read_events(&mut long).await;
    assert!(!clean, "the long stream is cut when the grace runs out");
    let status = mesh.node1.process.wait(Duration::from_secs(20));
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "deputyd exits 0 after draining: {status:?}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "it waited for the grace (5 s), not much longer: {took:?}"
    );
    let log = mesh.node1.process.output.text();
    assert!(
        log.contains("closed a drained connection whose streams outlived the grace")
            && log.contains("deputyd stopped"),
        "{log}"
    );
}

#[test]
fn a_client_that_opens_tls_and_never_finishes_the_handshake_is_cut_off() {
    let limits = "[limits]\nhandshake = \"1s\"\n";
    let mesh = Mesh::start_configured("1h", None, ("", limits));
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let mut stream = std::net::TcpStream::connect(&inbound).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // A TLS record header that promises a ClientHello, which never comes.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        closed.is_ok() && took < Duration::from_secs(10),
        "deputyd closes the connection after the handshake limit (1 s): {closed:?} after {took:?}"
    );
    mesh.node2.process.output.wait_for(
        "the TLS handshake did not finish in time",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_and_stream_limits_callers_get_503_and_others_are_served() {
    let limits = "[limits]\nmax_connections = 2\nmax_streams = 2\n";
    let mesh = Mesh::start_configured("1h", None, (limits, ""));
    let outbound = mesh.node1.outbound_of("alpha");

    // One h2c connection carrying two streams: a third request on it is refused.
    let mut first = client::h2c_connection(&outbound).await.expect("h2c");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = first
            .send_request(client::get("beta", "/events?count=100", Protocol::H2c))
            .await
            .expect("stream");
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response.into_body());
    }
    let third = first
        .send_request(client::get("beta", "/", Protocol::H2c))
        .await
        .expect("answered");
    refused_over(third, "[limits] max_streams").await;

    // A second connection is served; a third is over the listener's limit.
    let mut second = client::h2c_connection(&outbound).await.expect("h2c");
    let served = second
        .send_request(client::get("beta", "/", Protocol::H2c))
        .await
        .expect("served");
    assert_eq!(served.status(), StatusCode::OK);
    served.into_body().collect().await.expect("body");
    let over = client::send(
        &outbound,
        Protocol::Http1,
        client::get("beta", "/", Protocol::Http1),
    )
    .await
    .expect("answered");
    assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = client::json(over).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("[limits] max_connections")),
        "{problem}"
    );

    // Another agent's listener is not affected.
    let beta = client::send(
        &mesh.node2.outbound_of("beta"),
        Protocol::Http1,
        client::get("carol", "/", Protocol::Http1),
    )
    .await
    .expect("call");
    assert_eq!(beta.status(), StatusCode::OK);

    // A freed connection slot serves the next caller.
    drop(second);
    let next = eventually("a freed slot", Duration::from_secs(10), || {
        let outbound = outbound.clone();
        let status = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    client::send(
                        &outbound,
                        Protocol::Http1,
                        client::get("beta", "/", Protocol::Http1),
                    )
                    .await
                    .map(|r| r.status())
                })
        })
        .join()
        .expect("thread");
        status.ok().filter(|s| *s == StatusCode::OK)
    });
    assert_eq!(next, StatusCode::OK);
    let metrics = mesh.node1.metrics();
    assert!(
        metrics.contains("deputy_overloaded_total{direction=\"outbound\",limit=\"max_streams\"}")
            && metrics.contains(
                "deputy_overloaded_total{direction=\"outbound\",limit=\"max_connections\"}"
            ),
        "{metrics}"
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_between_two_agents_than_one_connection_carries_go_over_more_connections() {
    // Three requests per connection at each node, three connections per pair: nine streams of
    // alpha's go over three pooled connections to node2 (one would have refused six of them
    // 503); a tenth opens no fourth connection and is refused at once by node1.
    let limits = "[limits]\nmax_streams = 3\nmax_pool_connections = 3\n";
    let mesh = Mesh::start_configured("1h", None, (limits, limits));
    let mut streams = Vec::new();
    for _ in 0..9 {
        let mut body = events(&mesh, 600).await;
        first_event(&mut body).await;
        streams.push(body);
    }
    let pooled = || {
        connections(&mesh.node1)
            .into_iter()
            .filter(|c| c["side"] == "pool" && c["agent"] == "alpha")
            .collect::<Vec<_>>()
    };
    let open = pooled();
    assert_eq!(open.len(), 3, "{open:?}");
    for connection in &open {
        assert_eq!(connection["in_flight"], 3, "{connection}");
    }
    let inbound = || {
        connections(&mesh.node2)
            .into_iter()
            .filter(|c| c["side"] == "inbound" && c["agent"] == "beta")
            .count()
    };
    assert_eq!(inbound(), 3);
    assert!(
        !mesh.node2.metrics().contains("deputy_overloaded_total"),
        "{}",
        mesh.node2.metrics()
    );

    let request = client::alice_calls_beta("/events?count=600");
    let tenth = client::send(&mesh.node1.outbound_of("alpha"), Protocol::Http1, request)
        .await
        .expect("answered");
    refused_over(tenth, "[limits] max_pool_connections").await;
    assert_eq!(pooled().len(), 3);
    assert_eq!(inbound(), 3);

    // Every stream still flows.
    for body in &mut streams {
        next_event(body).await;
    }
}

/// node2's configuration without the `[[agent]]` block of `agent`.
fn without_agent(config: &str, agent: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut lines = config.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with('[') {
            skipping = line == "[[agent]]"
                && lines
                    .peek()
                    .is_some_and(|next| *next == format!("name = \"{agent}\""));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_and_a_removed_agents_are_drained_on_reload() {
    let limits = "[limits]\ndrain_grace = \"1s\"\n";
    let mesh = Mesh::start_configured("1h", None, (limits, limits));
    let mut body = events(&mesh, 600).await;
    first_event(&mut body).await;

    let on_node1 = connections(&mesh.node1);
    let pool = on_node1
        .iter()
        .find(|c| c["side"] == "pool")
        .unwrap_or_else(|| panic!("a pooled connection: {on_node1:?}"));
    assert_eq!(pool["agent"], "alpha");
    assert_eq!(pool["peer"], "spiffe://example.org/agent/beta");
    assert!(pool["local_svid_expires_at"].as_u64().is_some(), "{pool}");
    assert_eq!(pool["in_flight"], 1, "{pool}");
    let task = pool["tasks"][0].as_str().expect("the task seen").to_owned();
    assert!(
        on_node1
            .iter()
            .any(|c| c["side"] == "outbound" && c["agent"] == "alpha" && c["in_flight"] == 1),
        "alpha's own connection: {on_node1:?}"
    );
    let on_node2 = connections(&mesh.node2);
    let inbound = on_node2
        .iter()
        .find(|c| c["side"] == "inbound" && c["agent"] == "beta")
        .unwrap_or_else(|| panic!("beta's inbound connection: {on_node2:?}"));
    assert_eq!(inbound["peer"], "spiffe://example.org/agent/alpha");
    assert_eq!(
        inbound["tasks"][0],
        task.as_str(),
        "the same task at both ends"
    );
    assert!(inbound["peer_svid_expires_at"].as_u64().is_some());

    // beta is removed from node2's configuration.
    let path = mesh.dir.path().join("node2.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let reduced = without_agent(&config, "beta");
    assert!(!reduced.contains("name = \"beta\"") && reduced.contains("name = \"delta\""));
    std::fs::write(&path, reduced).expect("write");
    mesh.node2.process.signal(nix::sys::signal::Signal::SIGHUP);

    let reloaded = Instant::now();
    let (_, clean) = read_events(&mut body).await;
    assert!(!clean, "the stream to the removed agent is cut");
    assert!(reloaded.elapsed() < Duration::from_secs(10));
    mesh.node2
        .process
        .output
        .wait_for("agent removed", Duration::from_secs(5));
    let refused = client::send(
        &mesh.node1.outbound_of("alpha"),
        Protocol::Http1,
        client::get("beta", "/", Protocol::Http1),
    )
    .await
    .expect("answered");
    assert_ne!(
        refused.status(),
        StatusCode::OK,
        "the removed agent is not served"
    );
    eventually("beta's connections gone", Duration::from_secs(10), || {
        connections(&mesh.node2)
            .iter()
            .all(|c| c["agent"] != "beta")
            .then_some(())
    });
    // Its neighbour on node2 calls as before.
    let delta = client::send_as(
        deputy_tests::mesh::delta_uid(),
        &mesh.node2.outbound_of("delta"),
        Protocol::Http1,
        client::get("carol", "/", Protocol::Http1),
    )
    .await
    .expect("call");
    assert_eq!(delta.status(), StatusCode::OK);

    // The reload is in node2's audit trail: the file it read (its SHA-256) and what it did.
    let reloads = audit_records(&mesh.dir.path().join("state-node2"), "config");
    let expected = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8_lossy(&expected.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0]["outcome"], "applied", "{reloads:?}");
    assert_eq!(reloads[0]["file_sha256"], expected.as_str(), "{reloads:?}");
    assert_eq!(
        reloads[0]["removed"],
        serde_json::json!(["beta"]),
        "{reloads:?}"
    );

    // A file that does not load is recorded as rejected; beta's neighbour is still served.
    std::fs::write(&path, "this is not TOML [").expect("write");
    mesh.node2.process.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(
        "the rejected reload recorded",
        Duration::from_secs(10),
        || {
            let reloads = audit_records(&mesh.dir.path().join("state-node2"), "config");
            (reloads.len() == 2)
                .then(|| assert_eq!(reloads[1]["outcome"], "rejected", "{reloads:?}"))
        },
    );
}
