//! Tools outside the mesh (`[[external]]`): an agent calls `http://saas/...` through its outbound
//! listener and deputyd calls the tool over HTTPS itself (real TLS to a real server with a CA of
//! its own), under the base URL's path, with the task's id and no chain; a tool whose
//! certificate does not verify, and an agent not among the tool's callers, never reach it.

use std::path::Path;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::https_tool::HttpsTool;
use deputy_tests::{IssuerProcess, NodeProcess, my_uid, write_entries};
use http::{StatusCode, Version};

struct Setup {
    /// Offers HTTP/2 and HTTP/1.1; its CA is `ca_file`.
    saas: HttpsTool,
    /// Offers HTTP/1.1 only.
    legacy: HttpsTool,
    /// Its CA is not the one deputyd is told to trust.
    untrusted: HttpsTool,
    node: NodeProcess,
    _issuer: IssuerProcess,
    _dir: tempfile::TempDir,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path();
    let saas = HttpsTool::start(&[b"h2", b"http/1.1"]);
    let legacy = HttpsTool::start(&[b"http/1.1"]);
    let untrusted = HttpsTool::start(&[b"h2"]);
    let write_ca = |name: &str, pem: &str| {
        let file = path.join(name);
        std::fs::write(&file, pem).expect("write CA");
        file
    };
    let saas_ca = write_ca("saas-ca.pem", &saas.ca_pem);
    let legacy_ca = write_ca("legacy-ca.pem", &legacy.ca_pem);
    write_entries(path, &["alpha", "beta"], "1h", "1h");
    let issuer = IssuerProcess::start(path);
    let uid = my_uid();
    let config = format!(
        r#"{head}
[[agent]]
name = "alpha"
spiffe_id = "spiffe://example.org/agent/alpha"
outbound = "127.0.0.1:0"
uids = [{uid}]
originate = ["user:*"]

[[agent]]
name = "beta"
spiffe_id = "spiffe://example.org/agent/beta"
outbound = "127.0.0.1:0"
uids = [{beta_uid}]

[[external]]
name = "saas"
url = "https://{saas}/api/"
ca_file = "{saas_ca}"
callers = ["alpha", "beta"]

[[external]]
name = "legacy"
url = "https://{legacy}"
ca_file = "{legacy_ca}"
task_header = "x-task-id"
callers = ["alpha"]

[[external]]
name = "untrusted"
url = "https://{untrusted}"
ca_file = "{saas_ca}"
callers = ["alpha"]
"#,
        head = deputy_tests::node_config_head(path),
        beta_uid = uid + 7000,
        saas = saas.addr,
        saas_ca = saas_ca.display(),
        legacy = legacy.addr,
        legacy_ca = legacy_ca.display(),
        untrusted = untrusted.addr,
    );
    let config_path = path.join("deputyd.toml");
    std::fs::write(&config_path, config).expect("write config");
    let node = NodeProcess::start(&config_path);
    // Every agent's SVID (/readyz), not alpha's alone: the tests call as beta too, and a call
    // before beta's SVID arrives is a 503 (no-identity).
    deputy_tests::eventually("every SVID of the node", Duration::from_secs(20), || {
        deputy_tests::http_get(&node.admin, "/readyz").filter(|(code, _)| *code == 200)
    });
    Setup {
        saas,
        legacy,
        untrusted,
        node,
        _issuer: issuer,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_tool_outside_the_mesh_goes_over_https_with_its_task_and_no_chain() {
    let setup = start();
    let alpha = setup.node.outbound("alpha");

    // alpha starts a task and calls the tool: deputyd calls it over TLS (HTTP/2 by ALPN),
    // under the base URL's path, with the task's id and the call's id, and without a chain or
    // any of alpha's requests to deputyd.
    let mut call = client::get("saas", "/items?page=2", Protocol::Http1);
    for (name, value) in [
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "tickets:read"),
        ("deputy-task", "task-42"),
        ("x-agent-header", "kept"),
    ] {
        call.headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    let response = client::send(&alpha, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["deputy-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    for kept_from_the_agent in ["deputy-context", "set-cookie"] {
        assert!(
            !response.headers().contains_key(kept_from_the_agent),
            "the tool handed alpha {kept_from_the_agent}: {:?}",
            response.headers()
        );
    }
    assert_eq!(client::text(response).await, "ok");
    let received = setup.saas.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let got = &received[0];
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.path, "/api/items?page=2");
    assert_eq!(got.headers["deputy-task"], "task-42");
    assert_eq!(got.headers["deputy-request-id"], request_id.as_str());
    assert_eq!(got.headers["x-agent-header"], "kept");
    for absent in ["deputy-delegation", "deputy-principal", "deputy-scope"] {
        assert!(!got.headers.contains_key(absent), "{absent}: {got:?}");
    }

    // A call without a task carries no task id, whatever the agent wrote in the tool's task
    // header.
    let mut call = client::get("legacy", "/items", Protocol::H2c);
    call.headers_mut()
        .insert("x-task-id", "forged".parse().expect("value"));
    let response = client::send(&alpha, Protocol::H2c, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let received = setup.legacy.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        !received[0].headers.contains_key("x-task-id"),
        "{:?}",
        received[0]
    );

    // A path that would climb out of the tool's base path never reaches it.
    for path in ["/../admin", "/%2e%2e/admin", "/a%2Fb"] {
        let call = client::get("saas", path, Protocol::Http1);
        let response = client::send(&alpha, Protocol::Http1, call)
            .await
            .expect("call");
        client::expect_problem(
            response,
            StatusCode::BAD_REQUEST,
            "bad-request",
            "dot segment",
        )
        .await;
    }
    assert_eq!(setup.saas.received().len(), 1);

    // A tool that speaks HTTP/1.1 only gets HTTP/1.1, its own Host, the task in its header.
    let mut call = client::get("legacy", "/v1/ping", Protocol::H2c);
    call.headers_mut()
        .insert("deputy-principal", "user:bob".parse().expect("value"));
    call.headers_mut()
        .insert("deputy-scope", "tickets:read".parse().expect("value"));
    let mut body = client::full("payload");
    std::mem::swap(call.body_mut(), &mut body);
    *call.method_mut() = http::Method::POST;
    let response = client::send(&alpha, Protocol::H2c, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let received = setup.legacy.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let got = &received[1];
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.path, "/v1/ping");
    assert_eq!(got.body, b"payload");
    assert_eq!(got.headers["host"], setup.legacy.addr.as_str());
    let task = got.headers["x-task-id"].to_str().expect("task id");
    assert_eq!(task.len(), 36, "a generated task id (UUID): {task}");
    assert!(!got.headers.contains_key("deputy-task"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_does_not_verify_or_an_agent_not_among_its_callers_never_reaches_it() {
    let setup = start();

    // The tool's certificate does not chain to its ca_file: nothing is sent, and the agent is
    // told what to fix.
    let call = client::get("untrusted", "/secret-work", Protocol::Http1);
    let response = client::send(&setup.node.outbound("alpha"), Protocol::Http1, call)
        .await
        .expect("call");
    let problem = client::expect_problem(
        response,
        StatusCode::BAD_GATEWAY,
        "peer-not-trusted",
        "ca_file",
    )
    .await;
    assert!(
        problem["detail"].to_string().contains("certificate"),
        "{problem}"
    );
    assert!(setup.untrusted.received().is_empty());

    // beta may call saas but not legacy.
    let beta = setup.node.outbound("beta");
    let call = client::get("legacy", "/v1/ping", Protocol::Http1);
    let response = client::send_as(my_uid() + 7000, &beta, Protocol::Http1, call)
        .await
        .expect("call");
    client::expect_problem(
        response,
        StatusCode::FORBIDDEN,
        "peer-not-allowed",
        "callers",
    )
    .await;
    assert!(setup.legacy.received().is_empty());
    let call = client::get("saas", "/items", Protocol::Http1);
    let response = client::send_as(my_uid() + 7000, &beta, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(setup.saas.received().len(), 1);
}

#[test]
fn deputyd_check_refuses_an_external_service_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: &Path = dir.path();
    let config = path.join("deputyd.toml");
    std::fs::write(path.join("empty.pem"), "not a certificate\n").expect("write");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain = "example.org"
[[agent]]
name = "alpha"
spiffe_id = "spiffe://example.org/agent/alpha"
[[external]]
name = "plain"
url = "http://api.example.com"
callers = ["alpha"]
[[external]]
name = "nobody"
url = "https://api.example.com"
[[external]]
name = "badroots"
url = "https://api.example.com"
ca_file = "{}/empty.pem"
callers = ["ghost"]
[[external]]
name = "withpassword"
url = "https://user:hunter2-pw@api.example.com"
callers = ["alpha"]
[[external]]
name = "query"
url = "https://api.example.com/v1?key=1"
task_header = "authorization"
callers = ["alpha"]
[[external]]
name = "Plain"
url = "https://api.example.com"
callers = ["alpha"]
"#,
            path.display()
        ),
    )
    .expect("write config");
    let (status, output) = deputy_tests::run(
        std::process::Command::new(deputy_tests::binary("deputyd"))
            .arg("--check")
            .arg("--config")
            .arg(&config),
    );
    assert!(!status.success(), "{output}");
    for expected in [
        "url \"http://api.example.com\" must be https",
        "external[1] (\"nobody\"): without [policy], list the local agents",
        "holds no PEM certificate",
        "callers names no local agent \"ghost\"",
        "external[3] (\"withpassword\"): url holds a user name or password",
        "has a query",
        "task_header \"authorization\" is a header the request needs",
        "external[5] (\"Plain\"): another service has the same name",
    ] {
        assert!(output.contains(expected), "{expected:?} not in {output}");
    }
    assert!(
        !output.contains("hunter2-pw"),
        "the password was repeated: {output}"
    );
}
