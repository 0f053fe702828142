//! Three nodes in a row, one agent each, for a task that crosses all three:
//!
//! ```text
//! user -> a (node A, outbound, starts tasks for users)
//!      -> b (node B: demo agent upstream; outbound, which the test uses as b)
//!      -> c (node C: demo agent upstream)
//! ```
//!
//! Each node has an operator socket (this test's uid is its operator), its own state, and an
//! audit trail in it that signs a checkpoint every two records. Without
//! a policy, B and C serve the agents of the trust domain and tasks a starts for users.

use std::path::{Path, PathBuf};

use http::Response;
use hyper::body::Incoming;

use crate::client::{self, Protocol};
use crate::mesh::{Node, demo_agent};
use crate::{IssuerProcess, Process, my_uid, node_config_head, write_entries};

/// The running chain.
#[derive(Debug)]
pub struct Chain {
    /// The issuer (its CA is in `dir/ca`).
    pub issuer: IssuerProcess,
    /// Nodes A, B and C.
    pub nodes: [Node; 3],
    /// Each node's operator socket.
    pub sockets: [PathBuf; 3],
    /// The demo agents b and c.
    pub agents: Vec<Process>,
    /// Everything's directory.
    pub dir: tempfile::TempDir,
}

/// `spiffe://example.org/agent/NAME`.
pub fn agent_id(name: &str) -> String {
    format!("spiffe://example.org/agent/{name}")
}

fn agent(name: &str, extra: &str) -> String {
    format!(
        "[[agent]]\nname = \"{name}\"\nspiffe_id = \"{}\"\n{extra}\n",
        agent_id(name)
    )
}

fn service(name: &str, address: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nspiffe_id = \"{}\"\naddress = \"{address}\"\n",
        agent_id(name)
    )
}

/// Node `name`'s configuration: the shared head with a state directory of its own, its
/// operator socket, `rest` appended.
fn node_config(dir: &Path, name: &str, socket: &Path, rest: &str) -> PathBuf {
    let head = node_config_head(dir).replace(
        &dir.join("state").display().to_string(),
        &dir.join(format!("state-{name}")).display().to_string(),
    );
    let text = format!(
        "{head}[timeouts]\nrequest = \"30s\"\n[audit]\ncheckpoint_records = 2\n\
         [approvals]\nsocket = \"{}\"\noperators = [{}]\n{rest}",
        socket.display(),
        my_uid()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

impl Chain {
    /// Starts the issuer, the demo agents and the three nodes (C first: each node must know
    /// where the next listens), and waits until all are ready.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(dir.path(), &["a", "b", "c"], "1h", "1h");
        let issuer = IssuerProcess::start(dir.path());
        let (b_process, b_addr) = demo_agent("b", None);
        let (c_process, c_addr) = demo_agent("c", None);
        let sockets = ["a", "b", "c"].map(|n| dir.path().join(format!("operator-{n}.sock")));
        let uid = my_uid();
        let serve_a_tasks = format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\nallow_peers = [\"spiffe://example.org/agent/*\"]\n\
             [[originate]]\nspiffe_id = \"{}\"\nprincipals = [\"user:*\"]\n",
            agent_id("a")
        );
        let c = Node::start(&node_config(
            dir.path(),
            "c",
            &sockets[2],
            &format!(
                "{serve_a_tasks}{}",
                agent("c", &format!("upstream = \"http://{c_addr}\""))
            ),
        ));
        let c_inbound = c.inbound.clone().expect("C's inbound listener");
        let b = Node::start(&node_config(
            dir.path(),
            "b",
            &sockets[1],
            &format!(
                "{serve_a_tasks}{}{}",
                agent(
                    "b",
                    &format!(
                        "upstream = \"http://{b_addr}\"\noutbound = \"127.0.0.1:0\"\nuids = [{uid}]"
                    )
                ),
                service("c", &c_inbound)
            ),
        ));
        let b_inbound = b.inbound.clone().expect("B's inbound listener");
        let a = Node::start(&node_config(
            dir.path(),
            "a",
            &sockets[0],
            &format!(
                "{}{}",
                agent(
                    "a",
                    &format!(
                        "outbound = \"127.0.0.1:0\"\nuids = [{uid}]\noriginate = [\"user:*\"]"
                    )
                ),
                service("b", &b_inbound)
            ),
        ));
        for node in [&a, &b, &c] {
            node.wait_ready();
        }
        Self {
            issuer,
            nodes: [a, b, c],
            sockets,
            agents: vec![b_process, c_process],
            dir,
        }
    }
}

impl Chain {
    /// a's call to b (`GET /`) in `task` for `principal`: the context handle b received with
    /// it.
    pub async fn b_context(&self, principal: &str, task: &str) -> String {
        let mut request = client::get("b", "/", Protocol::Http1);
        for (name, value) in [
            ("deputy-principal", principal),
            ("deputy-scope", "events:read"),
            ("deputy-task", task),
        ] {
            request
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        let response = client::send(&self.nodes[0].outbound_of("a"), Protocol::Http1, request)
            .await
            .expect("a's call");
        let seen = client::json(response).await;
        seen["deputy_headers"]["deputy-context"]
            .as_str()
            .unwrap_or_else(|| panic!("b got no context: {seen}"))
            .to_owned()
    }

    /// b's call to c's `path`, continuing the task behind `context`.
    pub async fn b_calls_c(&self, context: &str, path: &str) -> Response<Incoming> {
        let mut request = client::get("c", path, Protocol::Http1);
        request
            .headers_mut()
            .insert("deputy-context", context.parse().expect("header value"));
        client::send(&self.nodes[1].outbound_of("b"), Protocol::Http1, request)
            .await
            .expect("b's call")
    }
}
