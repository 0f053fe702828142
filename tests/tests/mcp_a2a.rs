//! MCP and A2A, understood: the official `mcp` and `a2a-sdk` Python packages through a real
//! two-node mesh on the shipped policy (the pytest file `tests/mcp_a2a/test_through_the_mesh.py`
//! makes the calls; this test starts the mesh and reads both nodes' logs afterwards).
//!
//! The service node fronts `crm-sse` and `crm-json` (one MCP server with three tools, answering
//! with server-sent events or JSON; `arguments = ["/customer_id"]`) and `writer` (an A2A agent,
//! `a2a = true`). The caller node fronts `support-eu`, a support agent of the EU team. The two
//! nodes' customer data differ on purpose, so that each end's enforcement shows.

use std::path::Path;

use deputy_tests::mesh::Node;
use deputy_tests::policed::policy_dir;
use deputy_tests::{IssuerProcess, my_uid, python, unique_loopback_addr, write_entries};

const SUPPORT: &str = "spiffe://example.org/agent/support-eu";
const SERVED: [&str; 3] = ["crm-sse", "crm-json", "writer"];

/// The shipped policy's data, with `customers` as this node knows them.
fn policy_data(customers: serde_json::Value) -> serde_json::Value {
    let callers = serde_json::json!({"callers": [SUPPORT]});
    serde_json::json!({
        "services": {"crm-sse": callers, "crm-json": callers, "writer": callers},
        "originate": {SUPPORT: ["user:*"]},
        "limits": {"max_depth": 4, "max_depth_by_service": {}},
        "business_hours": {
            "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            "start": 0, "end": 24,
        },
        "customers": customers,
        "mcp": {
            "tools": {SUPPORT: ["lookup_customer", "search_tickets"]},
            "irreversible_tools": ["refund"],
            "customer_tools": ["lookup_customer"],
        },
        "a2a": {
            "methods": {SUPPORT: ["message/send", "message/stream", "tasks/get"]},
            "skills": {SUPPORT: ["summarize"]},
        },
    })
}

/// How a service is read: the CRMs as MCP with the customer argument, the writer as A2A.
fn protocol(name: &str) -> &'static str {
    if name == "writer" {
        "a2a = true\n"
    } else {
        "mcp = true\narguments = [\"/customer_id\"]\n"
    }
}

fn node_head(dir: &Path, node: &str, customers: serde_json::Value) -> String {
    let policy = policy_dir(dir, &format!("policy-{node}"), &policy_data(customers));
    format!(
        "trust_domain = \"example.org\"\n[identity]\nworkload_api = \"unix://{dir}/workload.sock\"\n\
         delegated_identity_api = \"unix://{dir}/admin.sock\"\nmin_backoff = \"100ms\"\n\
         max_backoff = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nrequest = \"20s\"\n\
         [state]\ndir = \"{dir}/state-{node}\"\n[policy]\ndir = \"{policy}\"\n\
         time_zone = \"Europe/Paris\"\n[policy.attributes.\"{SUPPORT}\"]\nkind = \"support\"\n\
         team = \"eu\"\n",
        dir = dir.display(),
        policy = policy.display(),
    )
}

#[test]
fn mcp_arguments_tool_lists_and_a2a_calls_are_judged_at_both_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = my_uid();
    write_entries(
        dir.path(),
        &["support-eu", "crm-sse", "crm-json", "writer"],
        "1h",
        "1h",
    );
    let _issuer = IssuerProcess::start(dir.path());
    let servers = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_a2a");
    let apps: Vec<_> = SERVED
        .iter()
        .map(|name| {
            python::app(
                &servers,
                &format!("servers:{}", name.replace('-', "_")),
                &[],
            )
        })
        .collect();

    let service_inbound = unique_loopback_addr();
    let mut service_config = node_head(
        dir.path(),
        "service",
        serde_json::json!({"cust-1001": {"team": "eu"}, "cust-2002": {"team": "us"}, "cust-3003": {"team": "eu"}}),
    );
    service_config.push_str(&format!("[inbound]\nlisten = \"{service_inbound}\"\n"));
    let mut caller_config = node_head(
        dir.path(),
        "caller",
        serde_json::json!({"cust-1001": {"team": "eu"}, "cust-2002": {"team": "eu"}, "cust-3003": {"team": "us"}}),
    );
    caller_config.push_str(&format!(
        "[[agent]]\nname = \"support-eu\"\nspiffe_id = \"{SUPPORT}\"\noutbound = \"127.0.0.1:0\"\n\
         uids = [{uid}]\n"
    ));
    for (name, (_, addr)) in SERVED.iter().zip(&apps) {
        let id = format!("spiffe://example.org/agent/{name}");
        service_config.push_str(&format!(
            "[[agent]]\nname = \"{name}\"\nspiffe_id = \"{id}\"\nupstream = \"http://{addr}\"\n{}",
            protocol(name)
        ));
        caller_config.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nspiffe_id = \"{id}\"\naddress = \"{service_inbound}\"\n{}",
            protocol(name)
        ));
    }
    let start = |name: &str, text: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("config");
        let node = Node::start(&path);
        node.wait_ready();
        node
    };
    let service_node = start("service", &service_config);
    let caller_node = start("caller", &caller_config);

    let pytest = std::panic::catch_unwind(|| {
        python::pytest(
            &servers.join("test_through_the_mesh.py"),
            &[(
                "DEPUTY_SUPPORT",
                format!("http://{}", caller_node.outbound_of("support-eu")).into(),
            )],
        )
    });
    let output = pytest.unwrap_or_else(|failed| {
        // What each end did is the first thing to read.
        eprintln!("caller node:\n{}", caller_node.process.output.text());
        eprintln!("service node:\n{}", service_node.process.output.text());
        std::panic::resume_unwind(failed)
    });
    assert!(output.contains("12 passed"), "{output}");

    // Each end filtered both lists (events and JSON): the service's end kept two of the server's
    // three tools, and the caller's end judged those two again.
    let logs = [
        (
            "caller node",
            caller_node.process.output.text(),
            "listed=2 kept=2",
        ),
        (
            "service node",
            service_node.process.output.text(),
            "listed=3 kept=2",
        ),
    ];
    for (node, log, counts) in &logs {
        // (The mcp client lists the tools before its first call of one, too.)
        let filtered: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("MCP list answer filtered by policy"))
            .collect();
        assert!(filtered.len() >= 2, "{node}: {log}");
        assert!(
            filtered.iter().all(|l| l.contains(counts)),
            "{node}: {filtered:#?}"
        );
        // Decision records name the declared argument, never its value; other arguments,
        // refused ones included, appear nowhere.
        assert!(
            log.contains("mcp_arguments=\"/customer_id\""),
            "{node}: {log}"
        );
        for value in ["cust-1001", "cust-2002", "cust-3003", "zebra-note"] {
            assert!(
                !log.contains(value),
                "{node} logged the argument value {value}: {log}"
            );
        }
    }
    for node in ["caller", "service"] {
        let trail = dir.path().join(format!("state-{node}/audit/audit.jsonl"));
        let trail = std::fs::read_to_string(&trail).expect("audit trail");
        assert!(
            trail.contains("tools/call") || trail.contains("/mcp"),
            "{trail}"
        );
        for value in ["cust-1001", "cust-2002", "cust-3003", "zebra-note"] {
            assert!(
                !trail.contains(value),
                "the {node} node's audit trail holds {value}"
            );
        }
    }
}
