//! Policy at both ends of every call, in real processes: the shipped policy (its .rego files as
//! shipped, with this mesh's data.json) decides outbound at the caller's deputyd and inbound at
//! the callee's; denials carry the decision id and reasons; MCP calls are judged by tool while
//! their bodies stream; a broken policy never replaces a good one.

use std::time::Duration;

use deputy_tests::policed::{
    ALPHA, BETA, assert_denied, call, mesh_data, policed_mesh, policed_mesh_on, policy_status,
    task, with_task,
};
use http::{Method, StatusCode};

/// A task for alice is allowed at both ends, and the policy narrows its scopes to what beta
/// accepts; returns what beta saw.
async fn alice_is_allowed_with_narrowed_scopes(alpha: &str) -> serde_json::Value {
    let alice = task("user:alice@example.org");
    let (status, body) = call(alpha, Method::GET, "/", &with_task(&alice), b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["deputy_headers"]["deputy-scope"], "tickets:read",
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_both_ends_of_every_call() {
    let (mesh, _dir, _) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");

    let alice = task("user:alice@example.org");
    let body = alice_is_allowed_with_narrowed_scopes(&alpha).await;
    assert_eq!(
        body["deputy_headers"]["deputy-principal"],
        "user:alice@example.org"
    );

    // Origination is the policy's question: alpha may start tasks for users only.
    let batch = task("service:batch");
    let (status, body) = call(&alpha, Method::GET, "/", &with_task(&batch), b"").await;
    let denied = assert_denied(
        status,
        &body,
        "policy-denied",
        "may not start tasks for service:batch",
    );
    // The decision log has it, under the id the agent was given (the line may reach this test's
    // reader after the agent has its answer).
    let line = mesh
        .node1
        .process
        .output
        .wait_for(&denied, Duration::from_secs(10));
    assert!(
        line.contains("policy decision") && line.contains("allow=false"),
        "{line}"
    );

    // Inbound: node1 lets alpha ask for another team's customer (it knows nothing of alpha's
    // team); node2, where alpha is a support agent of team eu, refuses it.
    let (status, body) = call(&alpha, Method::GET, "/customers/c-2002", &[], b"").await;
    let denied = assert_denied(status, &body, "policy-denied", "belongs to team us");
    mesh.node2
        .process
        .output
        .wait_for(&denied, Duration::from_secs(10));
    // node1's access line for the call comes after anything node1 logs of it.
    let request_id = body["request_id"].as_str().expect("a request id");
    mesh.node1
        .process
        .output
        .wait_for(&format!("request_id={request_id}"), Duration::from_secs(10));
    assert!(!mesh.node1.process.output.text().contains(&denied));
    // Support agents read customers only within a task with read scopes.
    let (status, body) = call(&alpha, Method::GET, "/customers/c-1001", &[], b"").await;
    assert_denied(
        status,
        &body,
        "policy-denied",
        "within a task with read scopes",
    );
    let reader = [
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "customers:read"),
    ];
    let (status, body) = call(&alpha, Method::GET, "/customers/c-1001", &reader, b"").await;
    assert_eq!(status, StatusCode::OK, "own team's customer: {body}");

    // A path the service would decode to another one is refused before the policy judges it.
    let (status, body) = call(&alpha, Method::POST, "/%70ayments/refund", &[], b"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("canonical"),
        "{body}"
    );

    // An irreversible action needs approval: the call is held until an operator approves it
    // (tests/approvals.rs).
    let (status, body) = call(&alpha, Method::DELETE, "/tickets/9", &[], b"").await;
    assert_denied(
        status,
        &body,
        "approval-required",
        "DELETE /tickets/9 is irreversible",
    );

    // A credential the agent sends reaches neither the policy nor the log in clear.
    let (status, _) = call(
        &alpha,
        Method::GET,
        "/credential-check",
        &[("authorization", "Bearer s3cret-token")],
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for node in [&mesh.node1, &mesh.node2] {
        // Both the decision record and the access line of the call are written by now.
        let output = &node.process.output;
        output.wait_for("path=/credential-check ", Duration::from_secs(10));
        assert!(!output.text().contains("s3cret-token"), "{}", output.text());
    }

    // beta continues alice's task to carol: beta's outbound and carol's inbound both decide.
    let (status, body) = call(
        &alpha,
        Method::GET,
        "/relay?to=carol&path=/tickets",
        &with_task(&alice),
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["response"]["caller"], BETA, "{body}");
}

fn rpc(tool: &str) -> Vec<u8> {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {"q": "refunds"}}})
    .to_string()
    .into_bytes()
}

/// `bytes`, gzip-compressed.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_are_judged_by_tool_and_a_body_cannot_smuggle_another_call() {
    let (mesh, _dir, _) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let beta_log = &mesh
        .agents
        .iter()
        .find(|a| a.0 == "beta")
        .expect("beta")
        .1
        .output;

    let (status, body) = call(&alpha, Method::POST, "/mcp", &JSON, &rpc("search_tickets")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["content"][0]["text"],
        "beta ran search_tickets"
    );

    let (status, body) = call(&alpha, Method::POST, "/mcp", &JSON, &rpc("drop_database")).await;
    assert_denied(status, &body, "policy-denied", "MCP tool drop_database");

    // Two `method`s: parsers disagree on which counts, so neither is trusted.
    let twice = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","method":"tools/call","params":{"name":"drop_database"}}"#;
    let (status, body) = call(&alpha, Method::POST, "/mcp", &JSON, twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["type"], "urn:deputy:problem:body-refused", "{body}");

    // A compressed body cannot be read for the policy, so it is refused, not waved through:
    // declared as JSON, or as text beta might decompress and parse as JSON-RPC all the same.
    let gzipped = gzip(&rpc("drop_database"));
    for declared in ["application/json", "text/plain"] {
        let headers = [("content-type", declared), ("content-encoding", "gzip")];
        let (status, body) = call(&alpha, Method::POST, "/mcp", &headers, &gzipped).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{declared}: {body}"
        );
        assert_eq!(
            body["type"], "urn:deputy:problem:body-not-inspectable",
            "{body}"
        );
        assert!(
            body["detail"].as_str().expect("detail").contains("gzip"),
            "{body}"
        );
    }
    // Nor does JSON-RPC declared as text reach an MCP service.
    let text = [("content-type", "text/plain")];
    let (status, body) = call(&alpha, Method::POST, "/mcp", &text, &rpc("drop_database")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    // The call pushed past the peek bound by padding: decided without a method, and the stream
    // is cut when the method shows up, so beta never receives a whole request.
    let padded = format!(
        r#"{{"jsonrpc":"2.0","id":3,"pad":"{}","method":"tools/call","params":{{"name":"drop_database"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let (status, body) = call(&alpha, Method::POST, "/mcp", &JSON, padded.as_bytes()).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    // The caller can hear of the cut before node1's log line reaches this test's reader.
    deputy_tests::eventually("node1 logs the cut", Duration::from_secs(5), || {
        let node1_log = mesh.node1.process.output.text();
        node1_log
            .contains("request body refused after the policy decision")
            .then_some(())
    });
    // A call made after the cut one reaches beta; the cut one, had it gone through, would have
    // run before the caller heard of the cut.
    let ran_before = beta_log.text().matches("ran search_tickets").count();
    let (status, body) = call(&alpha, Method::POST, "/mcp", &JSON, &rpc("search_tickets")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    deputy_tests::eventually("beta logs the later call", Duration::from_secs(5), || {
        (beta_log.text().matches("ran search_tickets").count() > ran_before).then_some(())
    });
    assert!(
        !beta_log.text().contains("ran drop_database"),
        "{}",
        beta_log.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_keeps_the_last_good_one_serving() {
    let (mesh, _dir, node1_policy) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let status_of = || policy_status(&mesh.node1.admin);
    let before = status_of();
    assert_eq!(before["engine"], "rego");
    assert!(before["last_error"].is_null(), "{before}");

    std::fs::write(
        node1_policy.join("broken.rego"),
        "package deputy.authz\nimport rego.v1\ndecision := {\"allow\": true\n",
    )
    .expect("write");
    mesh.node1.process.signal(nix::sys::signal::Signal::SIGHUP);
    let failed = deputy_tests::eventually("the reload fails", Duration::from_secs(10), || {
        let status = status_of();
        status["last_error"].is_string().then_some(status)
    });
    assert!(
        failed["last_error"]
            .as_str()
            .expect("error")
            .contains("broken.rego"),
        "{failed}"
    );
    assert_eq!(
        failed["revision"], before["revision"],
        "the last good policy serves"
    );
    // ... and still decides as it did: allowed calls pass, denied ones stay denied.
    let (status, _) = call(&alpha, Method::GET, "/", &[], b"").await;
    assert_eq!(status, StatusCode::OK);
    let batch = task("service:batch");
    let (status, _) = call(&alpha, Method::GET, "/", &with_task(&batch), b"").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A good change is picked up by the watcher without a signal.
    std::fs::remove_file(node1_policy.join("broken.rego")).expect("remove");
    let mut data = mesh_data(serde_json::json!({ALPHA: ["user:*"]}));
    data["services"]["beta"]["callers"] = serde_json::json!([]);
    std::fs::write(node1_policy.join("data.json"), data.to_string()).expect("write");
    let reloaded =
        deputy_tests::eventually("the new policy serves", Duration::from_secs(10), || {
            let status = status_of();
            (status["revision"] != before["revision"] && status["last_error"].is_null())
                .then_some(status)
        });
    assert!(
        reloaded["revision"]
            .as_str()
            .expect("revision")
            .starts_with("sha256:")
    );
    let (status, body) = call(&alpha, Method::GET, "/", &[], b"").await;
    assert_denied(status, &body, "policy-denied", "may not call beta");
}

/// SIGHUP re-reads the configured attributes: an agent moved to another team is judged as a
/// member of that team from then on; a configuration file that no longer loads changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_changed_attributes_in_force() {
    let (mesh, _dir, _) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let reader = [
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "customers:read"),
    ];
    let (status, body) = call(&alpha, Method::GET, "/customers/c-2002", &reader, b"").await;
    assert_denied(status, &body, "policy-denied", "belongs to team us");

    let config = mesh.dir.path().join("node2.toml");
    let text = std::fs::read_to_string(&config).expect("node2 config");
    assert!(text.contains("team = \"eu\""), "{text}");
    std::fs::write(&config, text.replace("team = \"eu\"", "team = \"us\"")).expect("write");
    let reread = |count: usize| {
        deputy_tests::eventually("the settings are re-read", Duration::from_secs(10), || {
            let log = mesh.node2.process.output.text();
            (log.matches("policy attributes and time zone re-read")
                .count()
                >= count)
                .then_some(())
        })
    };
    mesh.node2.process.signal(nix::sys::signal::Signal::SIGHUP);
    reread(1);
    let (status, body) = call(&alpha, Method::GET, "/customers/c-2002", &reader, b"").await;
    assert_eq!(status, StatusCode::OK, "alpha is in team us now: {body}");
    let (status, body) = call(&alpha, Method::GET, "/customers/c-1001", &reader, b"").await;
    assert_denied(status, &body, "policy-denied", "belongs to team eu");

    std::fs::write(&config, "this is not [toml").expect("write");
    mesh.node2.process.signal(nix::sys::signal::Signal::SIGHUP);
    deputy_tests::eventually("the bad file is reported", Duration::from_secs(10), || {
        let log = mesh.node2.process.output.text();
        log.contains("the configuration file does not load")
            .then_some(())
    });
    let (status, body) = call(&alpha, Method::GET, "/customers/c-2002", &reader, b"").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the settings in force are kept: {body}"
    );
}

/// A rule about a query parameter holds however the parameter is spelled or repeated: the
/// policy sees names decoded as the server decodes them, and every value of a repeated name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_rules_hold_for_repeated_and_encoded_parameters() {
    let (mesh, _dir, node1_policy) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let revision = || {
        let (_, text) = deputy_tests::http_get(&mesh.node1.admin, "/status").expect("status");
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["policy"]["revision"]
            .clone()
    };
    let before = revision();
    std::fs::write(
        node1_policy.join("query.rego"),
        "package deputy.authz\nimport rego.v1\n\
         deny contains sprintf(\"customer %s is off limits\", [c]) if {\n\
         \tsome c in input.request.query.customer\n\tc == \"c-2002\"\n}\n",
    )
    .expect("write");
    deputy_tests::eventually("the query rule serves", Duration::from_secs(10), || {
        (revision() != before).then_some(())
    });
    let (status, _) = call(&alpha, Method::GET, "/?customer=c-1001", &[], b"").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/?customer=c-2002",
        // Go and Flask act on the first value, other servers on the last: both are judged.
        "/?customer=c-2002&customer=c-1001",
        "/?customer=c-1001&customer=c-2002",
        "/?%63ustomer=c-2002",
        "/?customer=c%2D2002",
    ] {
        let (status, body) = call(&alpha, Method::GET, path, &[], b"").await;
        assert_denied(
            status,
            &body,
            "policy-denied",
            "customer c-2002 is off limits",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deputyd_enforces_the_shipped_policy_compiled_by_opa() {
    let (mesh, _dir, _) = policed_mesh_on(true);
    let alpha = mesh.node1.outbound_of("alpha");
    alice_is_allowed_with_narrowed_scopes(&alpha).await;

    // Reasons are the policy's own sprintf text, as OPA formats it (%q included).
    let batch = task("service:batch");
    let (status, body) = call(&alpha, Method::GET, "/", &with_task(&batch), b"").await;
    assert_denied(
        status,
        &body,
        "policy-denied",
        r#"spiffe://example.org/agent/alpha may not start tasks for service:batch (see data.originate["spiffe://example.org/agent/alpha"])"#,
    );
    let (status, body) = call(&alpha, Method::GET, "/customers/c-2002", &[], b"").await;
    assert_denied(
        status,
        &body,
        "policy-denied",
        "customer c-2002 belongs to team us, not to the agent's team eu",
    );
    for node in [&mesh.node1, &mesh.node2] {
        let (_, text) = deputy_tests::http_get(&node.admin, "/status").expect("status");
        let status: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(status["policy"]["engine"], "wasm", "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_signed_first_link_is_judged_by_the_receiving_policy() {
    // A client holding alpha's SVID and key speaks TLS to node2 itself, with no deputyd of its
    // own to ask: the link it signs is judged by node2's policy as if node1 had sent it.
    use deputy_tests::tls_client::{call_with_first_link, real_ca, signed, svid_params};
    let (mesh, _dir, _) = policed_mesh();
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let alpha = signed(&svid_params(&[ALPHA]), &real_ca(&mesh));
    let call_for = |principal: &'static str| {
        call_with_first_link(&inbound, "beta", &alpha, BETA, principal, None)
    };
    let answer = call_for("user:alice@example.org").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let answer = call_for("service:batch").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:policy-denied"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("{ALPHA} may not start tasks for service:batch")),
        "{answer}"
    );
}

/// Every `policy decision` line in `log`.
fn decision_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("policy decision"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_records_hold_no_secret_and_join_both_ends() {
    let (mesh, _dir, _) = policed_mesh();
    let alpha = mesh.node1.outbound_of("alpha");
    let alice = task("user:alice@example.org");
    let secrets = [
        ("authorization", "Bearer s3cr3t-bearer"),
        ("cookie", "session=s3cr3t-cookie"),
        ("mcp-session-id", "s3cr3t-session"),
    ];
    let headers: Vec<(&str, &str)> = with_task(&alice).into_iter().chain(secrets).collect();

    // Allowed at both ends, with a secret in a query value and in headers.
    let (status, body) = call(
        &alpha,
        Method::GET,
        "/tickets?api_key=s3cr3t-query",
        &headers,
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let allowed_id = body["deputy_headers"]["deputy-request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("beta hears the request id: {body}"))
        .to_owned();
    // Refused at node2 (another team's customer), with the same secrets.
    let (status, refused) = call(
        &alpha,
        Method::GET,
        "/customers/c-2002?api_key=s3cr3t-query",
        &headers,
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let refused_id = refused["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    // MCP calls whose tool arguments hold a secret, one allowed and one refused.
    let mcp_headers: Vec<(&str, &str)> = headers.iter().copied().chain(JSON).collect();
    let tool_call = |tool: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"q":"s3cr3t-argument"}}}}}}"#
        )
        .into_bytes()
    };
    let (status, body) = call(
        &alpha,
        Method::POST,
        "/mcp",
        &mcp_headers,
        &tool_call("search_tickets"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &alpha,
        Method::POST,
        "/mcp",
        &mcp_headers,
        &tool_call("refund"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The last decision each node made: node1 refused refund itself; node2 judged search_tickets.
    for (name, node, last) in [
        ("node1", &mesh.node1, "mcp_tool=\"refund\""),
        ("node2", &mesh.node2, "mcp_tool=\"search_tickets\""),
    ] {
        node.process.output.wait_for(last, Duration::from_secs(10));
        let log = node.process.output.text();
        assert!(!log.contains("s3cr3t"), "{name} logged a secret:\n{log}");
        let lines = decision_lines(&log);
        assert!(lines.len() >= 3, "{name}: {lines:#?}");
        for line in &lines {
            for field in [
                "record_version=1",
                "decision_id=",
                "request_id=",
                "time=",
                "direction=",
                "node=",
                "agent=",
                "principal=",
                "task=",
                "actors=",
                "method=",
                "path=",
                "allow=",
                "reasons=",
                "obligations=",
                "engine=\"rego\"",
                "revision=",
                "eval_us=",
            ] {
                assert!(line.contains(field), "{name}: no {field} in {line}");
            }
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&allowed_id) && l.contains("path=\"/tickets?api_key\"")),
            "{name}: no record of {allowed_id} with the query's name: {lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(&refused_id)),
            "{name}: no record of the refused {refused_id}: {lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("mcp_method=\"tools/call\"")
                && l.contains("mcp_tool=\"search_tickets\"")),
            "{name}: {lines:#?}"
        );
        // Nothing was dropped on the way to the log, and /status says so.
        assert_eq!(
            deputy_tests::status_of(&node.admin)["log"]["dropped_lines"],
            0,
            "{name}"
        );
        // The access line of the allowed call carries its request id and decision id.
        assert!(
            log.lines().any(|l| l.contains("deputy::access")
                && l.contains(&allowed_id)
                && l.contains("decision_id=")),
            "{name}: no access line joined to {allowed_id}"
        );
    }
}
