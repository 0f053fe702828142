//! A two-node mesh on loopback: one issuer, two deputyd processes, demo agents.
//!
//! ```text
//! node1: agent alpha (outbound, may start tasks for users), agent gamma (outbound; its uid is
//!        not allowed), agent omega (outbound on a unix socket), agent carol (upstream: demo
//!        agent); inbound mTLS
//! node2: agent beta (upstream: demo agent that relays through beta's outbound), agent delta
//!        (upstream: demo agent; outbound); inbound mTLS
//! node1 services: beta -> node2; delta-as-beta (SNI delta, expects beta's SPIFFE ID) -> node2
//! node2 services: carol -> node1
//! ```
//!
//! The chain user -> alpha (node1) -> beta (node2) -> carol (node1) crosses both nodes twice.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{IssuerProcess, Process, binary, my_uid, unique_loopback_addr};

/// The running mesh.
#[derive(Debug)]
pub struct Mesh {
    /// The issuer.
    pub issuer: IssuerProcess,
    /// Demo agents by name.
    pub agents: Vec<(String, Process, String)>,
    /// node1 (alpha, gamma).
    pub node1: Node,
    /// node2 (beta, delta).
    pub node2: Node,
    /// The directory holding everything.
    pub dir: tempfile::TempDir,
}

/// One deputyd with the addresses it bound.
#[derive(Debug)]
pub struct Node {
    /// The process.
    pub process: Process,
    /// Admin listener.
    pub admin: String,
    /// Inbound mTLS listener, if any.
    pub inbound: Option<String>,
    /// Outbound listeners by agent.
    pub outbound: Vec<(String, String)>,
}

impl Node {
    /// Starts deputyd with `config` and reads the addresses it reports.
    pub fn start(config: &Path) -> Self {
        Self::of(Process::spawn(&mut crate::deputyd_command(config)))
    }

    /// A started deputyd, with the addresses it reports once it has started.
    pub fn of(process: Process) -> Self {
        let started = process
            .output
            .wait_for("deputyd started", Duration::from_secs(20));
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let admin = field(&started, "admin=").expect("admin address");
        let text = process.output.text();
        let inbound = text
            .lines()
            .find(|l| l.contains("inbound mTLS listener bound"))
            .and_then(|l| field(l, "inbound="));
        let outbound = text
            .lines()
            .filter(|l| l.contains("outbound listener bound"))
            .filter_map(|l| Some((field(l, "agent=")?, field(l, "outbound=")?)))
            .collect();
        Self {
            process,
            admin,
            inbound,
            outbound,
        }
    }

    /// The outbound address of `agent`.
    pub fn outbound_of(&self, agent: &str) -> String {
        self.outbound
            .iter()
            .find(|(a, _)| a == agent)
            .map(|(_, addr)| addr.clone())
            .unwrap_or_else(|| panic!("no outbound listener for {agent}"))
    }

    /// Waits until `/readyz` says ready.
    pub fn wait_ready(&self) {
        crate::eventually("node ready", Duration::from_secs(30), || {
            crate::http_get(&self.admin, "/readyz").filter(|(code, _)| *code == 200)
        });
    }

    /// The Prometheus metrics text.
    pub fn metrics(&self) -> String {
        crate::http_get(&self.admin, "/metrics").expect("metrics").1
    }
}

/// Starts a demo agent (relaying through `outbound`, if given); returns it and its address.
pub fn demo_agent(name: &str, outbound: Option<&str>) -> (Process, String) {
    demo_agent_at(name, "127.0.0.1:0", outbound)
}

/// Starts a demo agent listening on `listen` (so that it can be started again where it was).
pub fn demo_agent_at(name: &str, listen: &str, outbound: Option<&str>) -> (Process, String) {
    let mut command = Command::new(binary("deputy"));
    command.args(["demo-agent", "--name", name, "--listen", listen]);
    if let Some(outbound) = outbound {
        command.args(["--outbound", outbound]);
    }
    let process = Process::spawn(&mut command);
    let line = process
        .output
        .wait_for("listening on", Duration::from_secs(20));
    let addr = line.rsplit(' ').next().expect("address").to_owned();
    (process, addr)
}

/// The uid delta's processes run as (every agent of a node has a uid of its own).
pub fn delta_uid() -> u32 {
    my_uid() + 4444
}

impl Mesh {
    /// node2's configuration as another node of the same agents (`name`): its own listeners and
    /// state directory, without the lines `drop` names, with `extra` appended; returns its path.
    pub fn node2_variant(&self, name: &str, drop: impl Fn(&str) -> bool, extra: &str) -> PathBuf {
        let config =
            std::fs::read_to_string(self.dir.path().join("node2.toml")).expect("node2 config");
        let mut text: String = config
            .lines()
            .filter(|l| !drop(l))
            .map(|l| {
                if l.starts_with("outbound = ") {
                    "outbound = \"127.0.0.1:0\"\n".to_owned()
                } else if l.starts_with("dir = ") && l.contains("state-node2") {
                    l.replace("state-node2", &format!("state-{name}")) + "\n"
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        text.push_str(extra);
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Starts everything, with agent SVIDs living `agent_ttl`, and waits until both nodes are
    /// ready.
    pub fn start(agent_ttl: &str) -> Self {
        Self::start_with(agent_ttl, None)
    }

    /// Starts everything with a `[policy]` section (TOML text, appended to the config) on each
    /// node: `(node1, node2)`. Agents then start tasks as the policy allows, not by `originate`.
    pub fn start_with(agent_ttl: &str, policy: Option<(&str, &str)>) -> Self {
        Self::start_configured(agent_ttl, policy, ("", ""))
    }

    /// Starts everything as [`start_with`](Self::start_with) does, with `extra` TOML text
    /// appended to each node's configuration: `(node1, node2)`.
    pub fn start_configured(
        agent_ttl: &str,
        policy: Option<(&str, &str)>,
        extra: (&str, &str),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid();
        let mut entries = format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/deputyd/node\"\nselectors = [\"unix:uid:{uid}\"]\n\n\
             [[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n\n"
        );
        for agent in ["alpha", "beta", "gamma", "delta", "omega", "carol"] {
            entries.push_str(&format!(
                "[[entry]]\nspiffe_id = \"spiffe://example.org/agent/{agent}\"\n\
                 selectors = [\"deputy:agent:{agent}\"]\nx509_ttl = \"{agent_ttl}\"\n\n"
            ));
        }
        std::fs::write(dir.path().join("entries.toml"), entries).expect("entries");
        let issuer = IssuerProcess::start(dir.path());
        // Each node must know where the other listens before it starts.
        let node1_inbound = unique_loopback_addr();
        let beta_outbound = unique_loopback_addr();
        // beta on an address of its own, where a fault test starts it again.
        let (beta_process, beta_addr) =
            demo_agent_at("beta", &unique_loopback_addr(), Some(&beta_outbound));
        let (delta_process, delta_addr) = demo_agent("delta", None);
        let (carol_process, carol_addr) = demo_agent("carol", None);

        let identity = format!(
            "trust_domain = \"example.org\"\n[identity]\nworkload_api = \"unix://{}\"\n\
             delegated_identity_api = \"unix://{}\"\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nrequest = \"10s\"\n",
            dir.path().join("workload.sock").display(),
            dir.path().join("admin.sock").display()
        );
        let agent = |name: &str, extra: &str| {
            format!(
                "[[agent]]\nname = \"{name}\"\nspiffe_id = \"spiffe://example.org/agent/{name}\"\n\
                 {extra}\n"
            )
        };
        // Without a policy, a node serves the peers and the tasks it is told to.
        let (allow_peers, originate_alpha) = if policy.is_some() {
            ("", "")
        } else {
            (
                "allow_peers = [\"spiffe://example.org/agent/*\"]\n",
                "[[originate]]\nspiffe_id = \"spiffe://example.org/agent/alpha\"\n\
                 principals = [\"user:*\"]\n",
            )
        };
        let node2_config = dir.path().join("node2.toml");
        let node2_state = dir.path().join("state-node2");
        let node2_state = node2_state.display();
        std::fs::write(
            &node2_config,
            format!(
                "{identity}[state]\ndir = \"{node2_state}\"\n[inbound]\nlisten = \"127.0.0.1:0\"\n{allow_peers}{originate_alpha}{}{}\
                 [[service]]\nname = \"carol\"\nspiffe_id = \"spiffe://example.org/agent/carol\"\naddress = \"{node1_inbound}\"\n{}",
                agent(
                    "beta",
                    &format!(
                        "upstream = \"http://{beta_addr}\"\noutbound = \"{beta_outbound}\"\nuids = [{uid}]\nmcp = true"
                    )
                ),
                agent(
                    "delta",
                    &format!(
                        "upstream = \"http://{delta_addr}\"\noutbound = \"127.0.0.1:0\"\nuids = [{}]",
                        delta_uid()
                    )
                ),
                policy.map_or("", |p| p.1).to_owned() + extra.1,
            ),
        )
        .expect("node2 config");
        let node2 = Node::start(&node2_config);
        let node2_inbound = node2.inbound.clone().expect("node2 inbound");

        // With a policy, starting tasks is the policy's decision.
        let originate = if policy.is_some() {
            ""
        } else {
            "originate = [\"user:*\"]"
        };
        let node1_config = dir.path().join("node1.toml");
        let node1_state = dir.path().join("state-node1");
        let node1_state = node1_state.display();
        std::fs::write(
            &node1_config,
            format!(
                "{identity}[state]\ndir = \"{node1_state}\"\n[inbound]\nlisten = \"{node1_inbound}\"\n{allow_peers}{}{}{}{}\
                 [[service]]\nname = \"beta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\naddress = \"{node2_inbound}\"\nmcp = true\n\
                 [[service]]\nname = \"delta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\naddress = \"{node2_inbound}\"\n{}",
                agent("alpha", &format!("outbound = \"127.0.0.1:0\"\nuids = [{uid}]\n{originate}")),
                agent("gamma", &format!("outbound = \"127.0.0.1:0\"\nuids = [{}]", uid + 4242)),
                agent(
                    "omega",
                    &format!(
                        "outbound = \"unix://{}\"\nuids = [{}]",
                        dir.path().join("omega.sock").display(),
                        uid + 4343
                    )
                ),
                agent("carol", &format!("upstream = \"http://{carol_addr}\"")),
                policy.map_or("", |p| p.0).to_owned() + extra.0,
            ),
        )
        .expect("node1 config");
        let node1 = Node::start(&node1_config);
        node1.wait_ready();
        node2.wait_ready();
        Self {
            issuer,
            agents: vec![
                ("beta".into(), beta_process, beta_addr),
                ("delta".into(), delta_process, delta_addr),
                ("carol".into(), carol_process, carol_addr),
            ],
            node1,
            node2,
            dir,
        }
    }
}
