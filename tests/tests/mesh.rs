//! Agent A -> deputyd (node1) -> mTLS -> deputyd (node2) -> agent B, across real processes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::Mesh;
use http::StatusCode;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;

const ALPHA: &str = "spiffe://example.org/agent/alpha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_call_each_other_over_http1_and_h2c_and_see_the_verified_caller() {
    let mesh = Mesh::start("1h");
    let outbound = mesh.node1.outbound_of("alpha");
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let mut request = client::get("beta", "/tickets/42?full=1", protocol);
        // A forged identity header: removed by the receiving deputyd, never forwarded.
        request.headers_mut().insert(
            "deputy-peer-id",
            "spiffe://example.org/agent/admin".parse().expect("value"),
        );
        request.headers_mut().insert(
            "deputy-chain-actors",
            "spiffe://example.org/agent/admin".parse().expect("value"),
        );
        let response = client::send(&outbound, protocol, request)
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
        let request_id = response
            .headers()
            .get("deputy-request-id")
            .expect("the caller hears the request id")
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = client::json(response).await;
        assert_eq!(body["agent"], "beta", "{body}");
        assert_eq!(body["path"], "/tickets/42", "{body}");
        assert_eq!(body["caller"], ALPHA, "B sees the verified caller: {body}");
        let headers = body["deputy_headers"].as_object().expect("headers");
        assert_eq!(
            headers.keys().collect::<Vec<_>>(),
            ["deputy-peer-id", "deputy-request-id"],
            "only deputyd's own facts reach the agent: {body}"
        );
        assert_eq!(
            headers["deputy-request-id"], request_id,
            "one request id at both ends: {body}"
        );
    }
    // `mcp://SERVICE/path` in the request line (seed 1's routing convention) is routed by the
    // service's name, the path kept.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(&outbound)
            .await
            .expect("connect");
        stream
            .write_all(
                b"GET mcp://beta/tools/list HTTP/1.1\r\nhost: beta\r\nconnection: close\r\n\r\n",
            )
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"path\":\"/tools/list\""), "{answer}");
        assert!(answer.contains(ALPHA), "{answer}");
    }
    let metrics = mesh.node2.metrics();
    assert!(
        metrics.contains(
            "deputy_requests_total{direction=\"inbound\",service=\"beta\",status=\"200\"}"
        ),
        "{metrics}"
    );
    let access = mesh
        .node1
        .process
        .output
        .wait_for("deputy::access", Duration::from_secs(5));
    assert!(
        access.contains("service=beta") && access.contains("status=200"),
        "{access}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one() {
    let mesh = Mesh::start("1h");
    let outbound = mesh.node1.outbound_of("alpha");
    let response = client::send(
        &outbound,
        Protocol::Http1,
        client::get("beta", "/events?count=5", Protocol::Http1),
    )
    .await
    .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("frame").data_ref() {
            arrivals.push(Instant::now());
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert_eq!(text.matches("event: tick").count(), 5, "{text}");
    // The agent spaces events 100 ms apart; buffering would deliver them together.
    let spread = *arrivals.last().expect("events") - arrivals[0];
    assert!(
        arrivals.len() >= 5 && spread >= Duration::from_millis(250),
        "events arrived in {} chunks over {spread:?}",
        arrivals.len()
    );
}

fn eventually_metric(node: &deputy_tests::mesh::Node, prefix: &str) -> f64 {
    deputy_tests::eventually(prefix, Duration::from_secs(5), || {
        let value = deputy_tests::metric(&node.metrics(), prefix);
        (value > 0.0).then_some(value)
    })
}

fn vm_hwm_kib(pid: nix::unistd::Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_with_bounded_memory() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let mesh = Mesh::start("1h");
    let outbound = mesh.node1.outbound_of("alpha");
    // Measured from here: a debug deputyd's own pages (its program, the allocator's arenas)
    // are most of 50 MiB before any call.
    let nodes = [&mesh.node1, &mesh.node2];
    let before = nodes.map(|node| vm_hwm_kib(node.process.pid()));
    let chunks = futures::stream::iter(
        (0..TOTAL / CHUNK as u64)
            .map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0x5a; CHUNK])))),
    );
    let request = http::Request::builder()
        .method("POST")
        .uri("http://beta/upload")
        .header("host", "beta")
        .body(StreamBody::new(chunks).boxed_unsync())
        .expect("request");
    let response = client::send(&outbound, Protocol::Http1, request)
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::OK);
    let body = client::json(response).await;
    assert_eq!(body["received"], TOTAL, "{body}");
    let counted = eventually_metric(
        &mesh.node1,
        "deputy_bytes_total{direction=\"outbound\",service=\"beta\",flow=\"request\"}",
    );
    assert_eq!(counted, TOTAL as f64, "bytes are counted");
    for (node, before) in nodes.into_iter().zip(before) {
        let peak = vm_hwm_kib(node.process.pid());
        assert!(
            peak < before + 32 * 1024,
            "deputyd's peak memory rose from {before} to {peak} KiB carrying 100 MiB: the body \
             must stream, not be held whole"
        );
    }
}

async fn problem(outbound: &str, service: &str) -> (StatusCode, serde_json::Value) {
    let response = client::send(
        outbound,
        Protocol::Http1,
        client::get(service, "/", Protocol::Http1),
    )
    .await
    .expect("call");
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{service}"
    );
    // Each of these is alpha's own deputyd refusing, and says so (an SDK trusts only this).
    assert_eq!(
        response.headers()["deputy-problem-source"],
        "this-node",
        "{service}"
    );
    (status, client::json(response).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problem_documents_that_say_what_to_do() {
    let mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");

    let (status, body) = problem(&alpha, "payments").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "urn:deputy:problem:unknown-service");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("known services"),
        "{body}"
    );
    assert!(body["request_id"].is_string());

    // node1 expects beta's SPIFFE ID behind the name delta; node2 presents delta's SVID.
    let (status, body) = problem(&alpha, "delta").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body["type"], "urn:deputy:problem:peer-identity-mismatch",
        "{body}"
    );
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("spiffe://example.org/agent/delta")
            && detail.contains("spiffe://example.org/agent/beta"),
        "{detail}"
    );

    // gamma's outbound listener admits another uid only.
    let (status, body) = problem(&mesh.node1.outbound_of("gamma"), "beta").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["type"], "urn:deputy:problem:caller-not-attested",
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains(&format!("uid {}", deputy_tests::my_uid()))
    );

    let metrics = mesh.node1.metrics();
    assert!(
        metrics.contains("deputy_tls_handshake_failures_total{direction=\"outbound\",reason=\"peer_identity_mismatch\"}"),
        "{metrics}"
    );
}

#[test]
fn plaintext_to_the_inbound_port_is_refused_in_words() {
    use std::io::{Read as _, Write as _};
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let mut stream = std::net::TcpStream::connect(&inbound).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: beta\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:tls-required"),
        "{answer}"
    );
    assert!(mesh.node2.metrics().contains("reason=\"not_tls\""));
}

fn serial(node: &deputy_tests::mesh::Node, agent: &str) -> String {
    let (_, body) = deputy_tests::http_get(&node.admin, "/status").expect("status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    status["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| i["name"] == agent)
        .and_then(|i| i["serial"].as_str())
        .expect("serial")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_new_handshakes_use_the_new_svid() {
    // SVIDs of 30 s rotate every 15 s: three rotations of both ends within the run.
    let mesh = Mesh::start("30s");
    let outbound = mesh.node1.outbound_of("alpha");
    let first_alpha = serial(&mesh.node1, "alpha");
    let first_beta = serial(&mesh.node2, "beta");
    let started = Instant::now();
    let mut sent = 0u32;
    let mut failed = Vec::new();
    let mut alpha_serials = std::collections::BTreeSet::from([first_alpha.clone()]);
    while started.elapsed() < Duration::from_secs(48) {
        let protocol = if sent.is_multiple_of(2) {
            Protocol::Http1
        } else {
            Protocol::H2c
        };
        match client::send(&outbound, protocol, client::get("beta", "/load", protocol)).await {
            Ok(response) if response.status() == StatusCode::OK => {
                let body = client::json(response).await;
                assert_eq!(body["caller"], ALPHA);
            }
            Ok(response) => failed.push(format!("status {}", response.status())),
            Err(e) => failed.push(e),
        }
        sent += 1;
        alpha_serials.insert(serial(&mesh.node1, "alpha"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );
    assert!(
        alpha_serials.len() >= 4,
        "three rotations of alpha's SVID during the run: {alpha_serials:?}"
    );
    let current_beta = serial(&mesh.node2, "beta");
    assert_ne!(current_beta, first_beta, "beta rotated too");
    // A new handshake with node2 presents beta's current SVID, not the first one.
    let ca = deputy_tests::tls_client::real_ca(&mesh);
    let client =
        deputy_tests::tls_client::signed(&deputy_tests::tls_client::svid_params(&[ALPHA]), &ca);
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let (answer, presented) =
        deputy_tests::tls_client::call_inspecting(&inbound, "beta", Some(client)).await;
    assert!(answer.expect("call").starts_with("HTTP/1.1 200"));
    let presented = presented.expect("server certificate");
    let (_, leaf) = x509_parser::parse_x509_certificate(&presented).expect("leaf");
    assert_eq!(
        leaf.raw_serial_as_string(),
        current_beta,
        "the new handshake presents the new SVID"
    );
    // Each of alpha's SVIDs was presented on a new handshake.
    let handshakes = deputy_tests::metric(
        &mesh.node1.metrics(),
        "deputy_tls_handshakes_total{direction=\"outbound\"}",
    );
    assert!(
        handshakes >= alpha_serials.len() as f64,
        "{handshakes} outbound handshakes for {} SVIDs",
        alpha_serials.len()
    );
    // And the far end saw them: the inbound handshakes on node2 match.
    let inbound = deputy_tests::metric(
        &mesh.node2.metrics(),
        "deputy_tls_handshakes_total{direction=\"inbound\"}",
    );
    assert!(
        inbound >= handshakes,
        "{inbound} inbound vs {handshakes} outbound"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::Write as _;
    let mesh = Mesh::start("1h");
    let connect = || {
        let stream =
            std::net::TcpStream::connect(mesh.node1.outbound_of("alpha")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream
    };
    // One begins a head and stops; one says nothing at all (before hyper knows the protocol
    // it runs no timer); one begins HTTP/2's preface and stops. Each is closed within the 5 s
    // a client has for its first request (`[timeouts] connect`), well under 15.
    let (mut head, mut silent, mut preface) = (connect(), connect(), connect());
    head.write_all(b"GET / HTTP/1.1\r\nHost: be")
        .expect("write");
    preface.write_all(b"PRI * HTT").expect("write");
    let started = Instant::now();
    for (what, stream) in [
        ("an unfinished head", &mut head),
        ("a silent client", &mut silent),
        ("an unfinished preface", &mut preface),
    ] {
        closed_within_15s(stream, started, what);
    }
}

#[test]
fn a_kept_alive_connection_waits_for_its_next_request_whose_head_must_still_come_whole() {
    use std::io::{Read as _, Write as _};
    let mesh = Mesh::start("1h");
    let mut stream =
        std::net::TcpStream::connect(mesh.node1.outbound_of("alpha")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let call = b"GET /tickets HTTP/1.1\r\nHost: beta\r\n\r\n";
    let answer = |stream: &mut std::net::TcpStream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("an answer on the kept connection");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).expect("body");
        head
    };
    stream.write_all(call).expect("write");
    assert!(answer(&mut stream).starts_with("HTTP/1.1 200"));
    // Idle past the 5 s a head may take (`[timeouts] connect`), well within `[timeouts] idle`:
    // the connection is still there for the agent's next call (it used to be closed at 5 s,
    // failing a call sent at that moment).
    std::thread::sleep(Duration::from_secs(7));
    stream.write_all(call).expect("write after idling");
    assert!(answer(&mut stream).starts_with("HTTP/1.1 200"));
    // A head begun and never finished is still cut 5 s after its first byte.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: be")
        .expect("write");
    closed_within_15s(
        &mut stream,
        Instant::now(),
        "a kept connection's unfinished head",
    );
}

/// Asserts that deputyd closes `stream` (5 s into what it waits for) well within 15 s of
/// `started`.
fn closed_within_15s(stream: &mut std::net::TcpStream, started: Instant, what: &str) {
    use std::io::Read as _;
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok() && started.elapsed() < Duration::from_secs(15),
        "deputyd closes {what}'s connection after 5 s: {closed:?} after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_starts_a_task_and_the_callee_sees_the_verified_chain() {
    let mesh = Mesh::start("1h");
    let outbound = mesh.node1.outbound_of("alpha");
    let with = |principal: &str, scope: Option<&str>| {
        let mut request = client::get("beta", "/tickets", Protocol::Http1);
        let headers = request.headers_mut();
        headers.insert("deputy-principal", principal.parse().expect("value"));
        headers.insert("deputy-task", "task-42".parse().expect("value"));
        if let Some(scope) = scope {
            headers.insert("deputy-scope", scope.parse().expect("value"));
        }
        request
    };
    let response = client::send(
        &outbound,
        Protocol::Http1,
        with("user:alice@example.org", Some("tickets:read, users:read")),
    )
    .await
    .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let body = client::json(response).await;
    let headers = &body["deputy_headers"];
    assert_eq!(
        headers["deputy-principal"], "user:alice@example.org",
        "{body}"
    );
    assert_eq!(headers["deputy-task"], "task-42", "{body}");
    assert_eq!(
        headers["deputy-scope"], "tickets:read, users:read",
        "{body}"
    );
    assert_eq!(
        headers["deputy-chain-actors"],
        format!("{ALPHA}, spiffe://example.org/agent/beta"),
        "{body}"
    );
    assert!(
        headers.get("deputy-delegation").is_none(),
        "the raw chain stays with deputyd: {body}"
    );

    // alpha may start tasks for users only, and a task needs scopes.
    let response = client::send(
        &outbound,
        Protocol::Http1,
        with("service:batch", Some("x:y")),
    )
    .await
    .expect("call");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        client::json(response).await["type"],
        "urn:deputy:problem:origination-refused"
    );
    let response = client::send(
        &outbound,
        Protocol::Http1,
        with("user:alice@example.org", None),
    )
    .await
    .expect("call");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        client::json(response).await["detail"]
            .as_str()
            .expect("detail")
            .contains("Deputy-Scope")
    );
}
