//! The Python SDK (`sdk/python`) against a real mesh: its pytest suite runs with the SDK read
//! from this clone, on the Python environment `scripts/peers` installs (httpx, the official
//! MCP SDK, uvicorn, pytest; pinned by hash).
//!
//! The mesh: `frontdoor` (node1) starts tasks for users and calls `triage` (node2), a Python
//! ASGI service behind the SDK's middleware, which continues the task through its own deputyd
//! to `crm` (node1), an MCP server on the official `mcp` package. Both nodes enforce the
//! shipped policy (triage may call the MCP tools `search_tickets` and `summarize` only; DELETE
//! needs an approval) and keep approvals on an operator socket.

use std::process::Command;

use deputy_tests::mesh::Node;
use deputy_tests::policed::policy_dir;
use deputy_tests::python::{self, sdk_dir};
use deputy_tests::{
    IssuerProcess, Process, binary, my_uid, peers, run, unique_loopback_addr, write_entries,
};

const FRONTDOOR: &str = "spiffe://example.org/agent/frontdoor";
const TRIAGE: &str = "spiffe://example.org/agent/triage";

/// Starts one of `sdk/python/tests/mesh`'s apps; returns it and its address.
fn python_app(name: &str, env: &[(&str, String)]) -> (Process, String) {
    python::app(&sdk_dir().join("tests/mesh"), &format!("{name}:app"), env)
}

fn policy_data() -> serde_json::Value {
    serde_json::json!({
        "services": {
            "triage": {"callers": [FRONTDOOR], "scopes": ["tickets:read", "tickets:write"]},
            "crm": {"callers": [TRIAGE]},
        },
        "originate": {FRONTDOOR: ["user:*"], TRIAGE: ["user:*"]},
        "limits": {"max_depth": 4, "max_depth_by_service": {}},
        "business_hours": {
            "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            "start": 0, "end": 24,
        },
        "customers": {},
        "mcp": {"tools": {TRIAGE: ["search_tickets", "summarize"]}, "irreversible_tools": ["refund"]},
    })
}

#[test]
fn the_python_sdks_tests_pass_against_a_real_mesh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = my_uid();
    write_entries(dir.path(), &["frontdoor", "triage", "crm"], "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());

    let node1_inbound = unique_loopback_addr();
    let triage_outbound = unique_loopback_addr();
    let (_crm, crm_addr) = python_app("crm", &[]);
    let (_triage, triage_addr) = python_app(
        "triage",
        &[(
            "DEPUTY_TRIAGE_OUTBOUND",
            format!("http://{triage_outbound}"),
        )],
    );

    let head = |node: &str| {
        let policy = policy_dir(dir.path(), &format!("policy-{node}"), &policy_data());
        format!(
            "trust_domain = \"example.org\"\n[identity]\nworkload_api = \"unix://{dir}/workload.sock\"\n\
             delegated_identity_api = \"unix://{dir}/admin.sock\"\nmin_backoff = \"100ms\"\n\
             max_backoff = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nrequest = \"20s\"\n\
             [state]\ndir = \"{dir}/state-{node}\"\n[policy]\ndir = \"{policy}\"\n\
             time_zone = \"Europe/Paris\"\n[approvals]\nsocket = \"{dir}/operator-{node}.sock\"\n\
             operators = [{uid}]\n",
            dir = dir.path().display(),
            policy = policy.display(),
        )
    };
    let node2_config = dir.path().join("node2.toml");
    std::fs::write(
        &node2_config,
        format!(
            "{}[inbound]\nlisten = \"127.0.0.1:0\"\n\
             [[agent]]\nname = \"triage\"\nspiffe_id = \"{TRIAGE}\"\nupstream = \"http://{triage_addr}\"\n\
             outbound = \"{triage_outbound}\"\nuids = [{uid}]\n\
             [[service]]\nname = \"crm\"\nspiffe_id = \"spiffe://example.org/agent/crm\"\n\
             address = \"{node1_inbound}\"\nmcp = true\n",
            head("node2")
        ),
    )
    .expect("node2 config");
    let node2 = Node::start(&node2_config);
    let node2_inbound = node2.inbound.clone().expect("node2 inbound");
    let node1_config = dir.path().join("node1.toml");
    std::fs::write(
        &node1_config,
        format!(
            "{}[inbound]\nlisten = \"{node1_inbound}\"\n\
             [[agent]]\nname = \"frontdoor\"\nspiffe_id = \"{FRONTDOOR}\"\noutbound = \"127.0.0.1:0\"\n\
             uids = [{uid}]\n\
             [[agent]]\nname = \"crm\"\nspiffe_id = \"spiffe://example.org/agent/crm\"\n\
             upstream = \"http://{crm_addr}\"\nmcp = true\n\
             [[service]]\nname = \"triage\"\nspiffe_id = \"{TRIAGE}\"\naddress = \"{node2_inbound}\"\n",
            head("node1")
        ),
    )
    .expect("node1 config");
    let node1 = Node::start(&node1_config);
    node1.wait_ready();
    node2.wait_ready();

    let audit = |node: &str| {
        dir.path()
            .join(format!("state-{node}/audit"))
            .into_os_string()
    };
    python::pytest(
        &sdk_dir().join("tests"),
        &[
            ("DEPUTY_BIN", binary("deputy").into_os_string()),
            (
                "DEPUTY_FRONTDOOR",
                format!("http://{}", node1.outbound_of("frontdoor")).into(),
            ),
            ("DEPUTY_TRIAGE", format!("http://{triage_outbound}").into()),
            (
                "DEPUTY_NODE1_OPERATOR",
                dir.path().join("operator-node1.sock").into_os_string(),
            ),
            (
                "DEPUTY_NODE2_OPERATOR",
                dir.path().join("operator-node2.sock").into_os_string(),
            ),
            ("DEPUTY_NODE1_AUDIT", audit("node1")),
            ("DEPUTY_NODE2_AUDIT", audit("node2")),
        ],
    );

    // The SDK is a package pip builds and installs (from a copy: a build writes into its tree).
    let copy = dir.path().join("sdk-copy");
    let (status, output) = run(Command::new("cp").arg("-r").arg(sdk_dir()).arg(&copy));
    assert!(status.success(), "{output}");
    let site = dir.path().join("site");
    let (status, output) = run(Command::new(peers::peer("deputy-sdk-python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
        ])
        .arg("--target")
        .arg(&site)
        .arg(&copy));
    assert!(status.success(), "pip cannot install the SDK:\n{output}");
    for file in ["deputy/__init__.py", "deputy/mcp.py", "deputy/py.typed"] {
        assert!(site.join(file).is_file(), "{file} not installed");
    }
}
