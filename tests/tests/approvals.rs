//! Approvals across real processes: the shipped policy asks for a human before an irreversible
//! call (DELETE); alpha's deputyd holds the call, records an approval bound to exactly that call,
//! and an operator decides it with `deputy approvals` on the operator socket. Only the identical
//! call passes, once, and only after an operator (by uid) approved it; a denial, a changed
//! body, a reuse and a non-operator are refused; approvals survive a restart of deputyd.

use std::path::Path;
use std::time::Duration;

use deputy_tests::mesh::Node;
use deputy_tests::policed::{call, policed_mesh_with};
use deputy_tests::recording::{Recorded, RecordingServer};
use deputy_tests::{audit_records, binary, deputy_as, eventually, my_uid, run};
use http::{Method, StatusCode};

/// alice's named task, as alpha sends it on every try.
const TASK: [(&str, &str); 3] = [
    ("deputy-principal", "user:alice@example.org"),
    ("deputy-scope", "tickets:read, users:read"),
    ("deputy-task", "close-ticket-9"),
];

/// A webhook receiver on loopback: every JSON body POSTed to it.
fn webhook() -> (String, Recorded<Vec<u8>>) {
    let hook = RecordingServer::start(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
    (format!("http://{}/hook", hook.addr), hook.bodies)
}

/// `deputy approvals ARGS --socket SOCKET` as this (operator) uid: its output, and whether it
/// succeeded.
fn approvals(socket: &Path, args: &[&str]) -> (bool, String) {
    let (status, output) = run(std::process::Command::new(binary("deputy"))
        .arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(socket));
    (status.success(), output)
}

/// alpha's DELETE of ticket 9 in alice's task, with `body`, naming `approval` if given.
async fn delete_ticket(
    alpha: &str,
    body: &[u8],
    approval: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    delete_ticket_as(alpha, "application/json", body, approval).await
}

/// [`delete_ticket`] with its body sent as `content_type`.
async fn delete_ticket_as(
    alpha: &str,
    content_type: &str,
    body: &[u8],
    approval: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut headers = TASK.to_vec();
    headers.push(("content-type", content_type));
    if let Some(id) = approval {
        headers.push(("deputy-approval", id));
    }
    call(alpha, Method::DELETE, "/tickets/9", &headers, body).await
}

fn approval_id(body: &serde_json::Value) -> String {
    body["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval id: {body}"))
        .to_owned()
}

fn refused_because(status: StatusCode, body: &serde_json::Value, says: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["type"], "urn:deputy:problem:approval-refused",
        "{body}"
    );
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains(says), "{says:?} not in {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_identical_call_passes_once_after_an_operator_approved_it_even_across_a_restart() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("operator.sock");
    let (hook, announced) = webhook();
    let section = format!(
        "[approvals]\nsocket = \"{}\"\noperators = [{}]\nttl = \"10m\"\nwebhook = \"{hook}\"\n",
        socket.display(),
        my_uid()
    );
    let (mut mesh, _policies, _) = policed_mesh_with(false, (&section, ""));
    let alpha = mesh.node1.outbound_of("alpha");
    let body = br#"{"reason": "duplicate"}"#;

    // The policy asks for a human: the call is held, never sent, and alpha is told the
    // approval's id and how to have it decided.
    let (status, held) = delete_ticket(&alpha, body, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{held}");
    assert_eq!(
        held["type"], "urn:deputy:problem:approval-required",
        "{held}"
    );
    let id = approval_id(&held);
    let detail = held["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("deputy approvals approve {id}")),
        "{detail}"
    );
    assert!(
        detail.contains("DELETE /tickets/9 is irreversible"),
        "{detail}"
    );
    // Asked again while pending: the same approval, not a second one.
    let (_, again) = delete_ticket(&alpha, body, None).await;
    assert_eq!(approval_id(&again), id);

    // A person was told once, with what to run, and nothing of the body.
    let told = eventually("the webhook told", Duration::from_secs(10), || {
        let bodies = announced.lock().expect("lock");
        let body = bodies.first()?;
        Some(serde_json::from_slice::<serde_json::Value>(body).expect("a JSON body"))
    });
    assert_eq!(told["approval_id"], id.as_str(), "{told}");
    assert_eq!(told["path"], "/tickets/9", "{told}");
    assert!(
        told["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("deputy approvals approve {id}"))),
        "{told}"
    );
    assert!(
        !told.to_string().contains("duplicate"),
        "the body was sent: {told}"
    );

    let (ok, listed) = approvals(&socket, &["list"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&id) && listed.contains("pending"),
        "{listed}"
    );

    // Redeeming before a decision is refused.
    let (status, body_) = delete_ticket(&alpha, body, Some(&id)).await;
    refused_because(status, &body_, "still waiting for an operator");

    // A uid that is not an operator cannot approve, even when the socket's file mode lets it
    // connect (deputyd makes it 0660: reaching it is the first gate, the uid the second).
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .expect("open the socket");
    }
    let (status, output) = run(deputy_as(my_uid() + 4242, sockets.path())
        .args(["approvals", "approve", &id, "--socket"])
        .arg(&socket));
    assert!(!status.success(), "{output}");
    assert!(output.contains("is not an operator"), "{output}");

    let (ok, approved) = approvals(&socket, &["approve", &id, "--note", "checked with alice"]);
    assert!(ok, "{approved}");
    assert!(approved.contains("\"approved\""), "{approved}");

    // A changed body does not ride on the approval, nor the same bytes as another media type.
    let (status, changed) = delete_ticket(&alpha, br#"{"reason": "all"}"#, Some(&id)).await;
    refused_because(status, &changed, "its body differs");
    let (status, changed) =
        delete_ticket_as(&alpha, "application/merge-patch+json", body, Some(&id)).await;
    refused_because(status, &changed, "its headers differ");

    // deputyd restarts: the approval is still there.
    let config = mesh.dir.path().join("node1.toml");
    mesh.node1.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(mesh.node1.process.wait(Duration::from_secs(30)).success());
    mesh.node1 = Node::start(&config);
    mesh.node1.wait_ready();
    let alpha = mesh.node1.outbound_of("alpha");

    // The identical call passes, once.
    let (status, passed) = delete_ticket(&alpha, body, Some(&id)).await;
    assert_eq!(status, StatusCode::OK, "{passed}");
    assert_eq!(passed["agent"], "beta", "{passed}");
    assert_eq!(passed["method"], "DELETE", "{passed}");
    let (status, reused) = delete_ticket(&alpha, body, Some(&id)).await;
    refused_because(status, &reused, "already used");

    assert_eq!(
        announced.lock().expect("lock").len(),
        1,
        "announced more than once"
    );

    // Who approved what is recorded.
    let (ok, shown) = approvals(&socket, &["show", &id]);
    assert!(ok, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(shown["state"], "used", "{shown}");
    assert_eq!(shown["note"], "checked with alice", "{shown}");
    assert!(
        shown["decided_by"]
            .as_str()
            .is_some_and(|by| by.starts_with(&format!("uid {}", my_uid()))),
        "{shown}"
    );
    assert_eq!(shown["binding"]["task"], "close-ticket-9", "{shown}");
    mesh.node1
        .process
        .output
        .wait_for(&format!("approval={id}"), Duration::from_secs(5));

    // The audit trail joins the held call, the operator's decision and the call that went
    // through by the approval's id.
    let state = mesh.dir.path().join("state-node1");
    let calls: Vec<_> = audit_records(&state, "call")
        .into_iter()
        .filter(|c| c["approval"] == id.as_str() && c["direction"] == "outbound")
        .collect();
    let problems: Vec<_> = calls.iter().map(|c| c["problem"].clone()).collect();
    assert!(
        problems.contains(&"urn:deputy:problem:approval-required".into()),
        "the held call is not recorded with its approval: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c["status"] == 200 && c["task"] == "close-ticket-9"),
        "the approved call is not recorded with its approval: {calls:?}"
    );
    let decided = audit_records(&state, "approval");
    assert!(
        decided
            .iter()
            .any(|a| a["id"] == id.as_str() && a["decision"] == "approved"),
        "{decided:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_approval_refuses_the_call_with_the_operators_note() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("operator.sock");
    let section = format!(
        "[approvals]\nsocket = \"{}\"\noperators = [{}]\n",
        socket.display(),
        my_uid()
    );
    let (mesh, _policies, _) = policed_mesh_with(false, (&section, ""));
    let alpha = mesh.node1.outbound_of("alpha");

    // A dry run says an approval would be asked for, and asks for none.
    let mut dry = TASK.to_vec();
    dry.push(("deputy-dry-run", "true"));
    let (status, report) = call(&alpha, Method::DELETE, "/tickets/9", &dry, b"").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["outbound"]["approval"]["required"], true, "{report}");
    assert!(
        report["outbound"]["approval"]["verdict"]
            .as_str()
            .is_some_and(|v| v.contains("would be asked for")),
        "{report}"
    );
    assert!(report["inbound"]["decision_id"].is_string(), "{report}");
    let (ok, listed) = approvals(&socket, &["list"]);
    assert!(ok && listed.contains("no approvals"), "{listed}");

    let (_, held) = delete_ticket(&alpha, b"", None).await;
    let id = approval_id(&held);
    let (ok, denied) = approvals(&socket, &["deny", &id, "--note", "not during the audit"]);
    assert!(ok, "{denied}");
    let (status, body) = delete_ticket(&alpha, b"", Some(&id)).await;
    refused_because(status, &body, "not during the audit");
    // A decided approval is not decided again.
    let (ok, again) = approvals(&socket, &["approve", &id]);
    assert!(!ok, "{again}");
    assert!(again.contains("already"), "{again}");
    // An id that was never issued is unknown.
    let (status, body) = delete_ticket(&alpha, b"", Some("apr_0000")).await;
    refused_because(status, &body, "unknown");
}
