//! A real SPIRE deployment for a test: one `spire-server` (SQLite datastore, join-token node
//! attestation) and any number of `spire-agent`s (unix workload attestor, an admin socket with
//! authorized delegates), as built by `scripts/peers`.
//!
//! SPIRE agents reach their server over TCP, and `spire-server` has no way to bind an
//! ephemeral port (0 means its default, 8081). So that tests never pick ports or collide, each
//! deployment gets a network namespace of its own (`unshare --net`, which needs root, as CI
//! has): the server and its agents share it, and everything else Deputy talks to them through
//! is a unix socket, which namespaces do not separate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peers::peer;
use crate::{Output, Process, run};

/// How long a SPIRE process may take to start serving.
const START: Duration = Duration::from_secs(60);

/// A running `spire-server` in its own network namespace.
#[derive(Debug)]
pub struct SpireServer {
    /// The process.
    pub process: Process,
    /// Its directory: configuration, datastore, sockets.
    pub dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
}

impl SpireServer {
    /// Starts a server for `trust_domain` in `dir` and waits until it serves its agents.
    pub fn start(dir: &Path, trust_domain: &str) -> Self {
        std::fs::create_dir_all(dir).expect("server dir");
        let config = dir.join("server.conf");
        std::fs::write(
            &config,
            format!(
                r#"server {{
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    log_level = "INFO"
    bind_address = "127.0.0.1"
    bind_port = 8081
    socket_path = "{socket}"
    ca_key_type = "ec-p256"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
}}
"#,
                data = dir.join("data").display(),
                socket = dir.join("server.sock").display(),
            ),
        )
        .expect("server.conf");
        let mut command = Command::new("unshare");
        command
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                r#"ip link set lo up && exec "$0" "$@""#,
            ])
            .arg(peer("spire-server"))
            .args(["run", "-config"])
            .arg(&config);
        let process = Process::spawn(&mut command);
        wait_for_start(&process.output, "network=tcp", "spire-server");
        Self {
            process,
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The server's admin socket (`spire-server ... -socketPath`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("server.sock")
    }

    /// Runs `spire-server ARGS -socketPath SOCKET`; panics with its output if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let (status, output) = run(Command::new(peer("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.socket()));
        assert!(status.success(), "spire-server {args:?} failed:\n{output}");
        output
    }

    /// A one-time join token whose agent is aliased as `spiffe://TD/node/NAME`: the parent ID
    /// of that node's entries.
    pub fn join_token(&self, node: &str) -> String {
        let alias = self.node_id(node);
        let output = self.cli(&["token", "generate", "-spiffeID", &alias]);
        output
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("a token in {output:?}"))
            .to_owned()
    }

    /// The SPIFFE ID the entries of node `node` are parented to.
    pub fn node_id(&self, node: &str) -> String {
        format!("spiffe://{}/node/{node}", self.trust_domain)
    }

    /// Where the server's bundle is written for agents to bootstrap from.
    fn bundle_path(&self) -> PathBuf {
        let path = self.dir.join("bundle.pem");
        if !path.exists() {
            std::fs::write(&path, self.cli(&["bundle", "show"])).expect("bundle");
        }
        path
    }

    /// `/proc/PID/ns/net` of the server: where its agents must run.
    fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.process.pid()))
    }
}

/// A running `spire-agent`, attested to a [`SpireServer`] with a join token.
#[derive(Debug)]
pub struct SpireAgent {
    /// The process, while it runs.
    pub process: Option<Process>,
    /// Its directory: configuration, data, sockets.
    pub dir: PathBuf,
    netns: PathBuf,
    /// The node name its entries are parented to (`spiffe://TD/node/NAME`).
    pub node: String,
}

impl SpireAgent {
    /// Starts the agent of node `node`, whose admin socket lets `delegates` (SPIFFE IDs) use the
    /// Delegated Identity API, and waits until it serves the Workload API.
    pub fn start(server: &SpireServer, node: &str, delegates: &[&str]) -> Self {
        let dir = server.dir.join(format!("agent-{node}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let delegates = delegates
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            dir.join("agent.conf"),
            format!(
                r#"agent {{
    trust_domain = "{td}"
    data_dir = "{data}"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = 8081
    trust_bundle_path = "{bundle}"
    socket_path = "{public}"
    admin_socket_path = "{admin}"
    authorized_delegates = [{delegates}]
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
                td = server.trust_domain,
                data = dir.join("data").display(),
                bundle = server.bundle_path().display(),
                public = dir.join("public/api.sock").display(),
                admin = dir.join("admin/api.sock").display(),
            ),
        )
        .expect("agent.conf");
        let mut agent = Self {
            process: None,
            dir,
            netns: server.netns(),
            node: node.to_owned(),
        };
        agent.run(Some(&server.join_token(node)));
        agent
    }

    fn run(&mut self, join_token: Option<&str>) {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(peer("spire-agent"))
            .args(["run", "-config"])
            .arg(self.dir.join("agent.conf"));
        if let Some(token) = join_token {
            command.args(["-joinToken", token]);
        }
        let process = Process::spawn(&mut command);
        wait_for_start(
            &process.output,
            "Starting Workload and SDS APIs",
            "spire-agent",
        );
        self.process = Some(process);
    }

    /// Stops the agent (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let process = self.process.take().expect("the agent is running");
        process.stop();
    }

    /// Starts the stopped agent again; it keeps its node identity from its data directory.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "stop the agent first");
        self.run(None);
    }

    /// The public Workload API socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("public/api.sock")
    }

    /// The admin socket (Delegated Identity API).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin/api.sock")
    }
}

fn wait_for_start(output: &Output, needle: &str, what: &str) {
    let deadline = std::time::Instant::now() + START;
    loop {
        let text = output.text();
        if text.contains(needle) {
            return;
        }
        assert!(
            !text.contains("Operation not permitted") && !text.contains("unshare failed"),
            "{what} cannot get a network namespace of its own: the SPIRE tests need root \
             (unshare --net); output:\n{text}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not start within {START:?}; output:\n{text}"
        );
        output.wait_changed(Duration::from_millis(500));
    }
}
