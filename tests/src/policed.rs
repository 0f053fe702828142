//! The shipped policy on a two-node mesh, and calls through it: what the policy and approvals
//! tests share. node2 knows alpha as a support agent of team eu; node1 knows nothing about it.

use std::path::{Path, PathBuf};

use http::{Method, StatusCode};

use crate::client::{self, Protocol};
use crate::mesh::Mesh;

pub const ALPHA: &str = "spiffe://example.org/agent/alpha";
pub const BETA: &str = "spiffe://example.org/agent/beta";

/// The shipped policy's modules with `data` beside them, in `dir/name`.
pub fn policy_dir(dir: &Path, name: &str, data: &serde_json::Value) -> PathBuf {
    let target = dir.join(name);
    std::fs::create_dir_all(&target).expect("policy dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/authz");
    for entry in std::fs::read_dir(&shipped).expect("shipped policy") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if file.ends_with(".rego") && !file.ends_with("_test.rego") {
            std::fs::copy(&path, target.join(&file)).expect("copy");
        }
    }
    std::fs::write(target.join("data.json"), data.to_string()).expect("data.json");
    target
}

pub fn mesh_data(originate: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "services": {
            "beta": {"callers": [ALPHA], "scopes": ["tickets:read", "tickets:write", "customers:read"]},
            "carol": {"callers": [BETA]},
        },
        "originate": originate,
        "limits": {"max_depth": 4, "max_depth_by_service": {}},
        "business_hours": {
            "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            "start": 0, "end": 24,
        },
        "customers": {"c-1001": {"team": "eu"}, "c-2002": {"team": "us"}},
        "mcp": {"tools": {ALPHA: ["search_tickets"]}, "irreversible_tools": ["refund"]},
    })
}

/// A mesh whose nodes enforce the shipped policy. node2 knows alpha as a support agent of team
/// eu; node1 knows nothing about it (so only node2's inbound check applies support rules).
pub fn policed_mesh() -> (Mesh, tempfile::TempDir, PathBuf) {
    policed_mesh_on(false)
}

/// [`policed_mesh`], on the Rego sources or (`wasm`) on bundles `opa build -t wasm` compiled.
pub fn policed_mesh_on(wasm: bool) -> (Mesh, tempfile::TempDir, PathBuf) {
    policed_mesh_with(wasm, ("", ""))
}

/// [`policed_mesh_on`], with `extra` TOML text appended to each node's configuration:
/// `(node1, node2)`.
pub fn policed_mesh_with(wasm: bool, extra: (&str, &str)) -> (Mesh, tempfile::TempDir, PathBuf) {
    policed_mesh_rotating(wasm, extra, "1h")
}

/// [`policed_mesh_with`], with agent SVIDs living `agent_ttl` (rotated at half of it).
pub fn policed_mesh_rotating(
    wasm: bool,
    extra: (&str, &str),
    agent_ttl: &str,
) -> (Mesh, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node1 = policy_dir(
        dir.path(),
        "node1",
        &mesh_data(serde_json::json!({ALPHA: ["user:*"]})),
    );
    let node2 = policy_dir(
        dir.path(),
        "node2",
        &mesh_data(serde_json::json!({ALPHA: ["user:*"]})),
    );
    let section = |dir: &Path, extra: &str| {
        let source = if wasm {
            let name = format!(
                "{}.tar.gz",
                dir.file_name().expect("name").to_string_lossy()
            );
            let bundle = crate::opa::build_wasm(dir.parent().expect("parent"), &name, &[dir], &[]);
            format!("engine = \"wasm\"\nbundle = \"{}\"", bundle.display())
        } else {
            format!("dir = \"{}\"", dir.display())
        };
        format!(
            "[policy]\n{source}\ntime_zone = \"Europe/Paris\"\nwatch_interval = \"200ms\"\n{extra}"
        )
    };
    let node1_policy = section(&node1, "");
    let node2_policy = section(
        &node2,
        &format!("[policy.attributes.\"{ALPHA}\"]\nkind = \"support\"\nteam = \"eu\"\n"),
    );
    let mesh = Mesh::start_configured(agent_ttl, Some((&node1_policy, &node2_policy)), extra);
    (mesh, dir, node1)
}

pub async fn call(
    outbound: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, serde_json::Value) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "beta");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(client::full(body.to_vec())).expect("request");
    match client::send(outbound, Protocol::Http1, request).await {
        Ok(response) => (response.status(), client::json(response).await),
        // The connection was cut: what a caller sees when deputyd aborts a request stream.
        Err(e) => (StatusCode::BAD_GATEWAY, serde_json::json!({"error": e})),
    }
}

/// The `policy` part of a node's `/status`.
pub fn policy_status(admin: &str) -> serde_json::Value {
    let (_, text) = crate::http_get(admin, "/status").expect("status");
    serde_json::from_str::<serde_json::Value>(&text).expect("json")["policy"].clone()
}

pub fn task(principal: &str) -> [(&'static str, String); 2] {
    [
        ("deputy-principal", principal.to_owned()),
        ("deputy-scope", "tickets:read, users:read".to_owned()),
    ]
}

pub fn with_task<'a>(task: &'a [(&'static str, String); 2]) -> Vec<(&'a str, &'a str)> {
    task.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn assert_denied(
    status: StatusCode,
    body: &serde_json::Value,
    kind: &str,
    reason: &str,
) -> String {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], format!("urn:deputy:problem:{kind}"), "{body}");
    let id = body["decision_id"]
        .as_str()
        .expect("a decision id")
        .to_owned();
    assert!(
        body["detail"].as_str().expect("detail").contains(&id),
        "{body}"
    );
    let reasons = body["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains(reason))),
        "expected a reason containing {reason:?}: {body}"
    );
    id
}
