//! Restarts that refuse nothing: a node's deputyd restarted as its unit does it, under a
//! bounded load of keep-alive calls, fails none of them.
//!
//! The machines run no systemd, so a test stands in for it (`deputy_tests::supervisor`): the
//! notify socket with its file descriptor store, and starting deputyd again with the stored
//! sockets handed over. What it does is what `examples/systemd/deputyd.service` asks of systemd:
//! - an upgrade: the binary is replaced, `ExecReload=` runs the new one's `--check` (a
//!   configuration it refuses stops the reload there, and the old deputyd keeps serving), then
//!   SIGHUP; the old deputyd drains and exits 75, and systemd starts the new binary at once
//!   (`RestartForceExitStatus=75`);
//! - `systemctl restart`: SIGTERM, drain, exit 0, then the same start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::supervisor::Supervisor;
use deputy_tests::{binary, run};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;

/// Agents calling through alpha's outbound listener, each over a pooled keep-alive connection
/// (hyper's client, as an agent's HTTP library holds one), one call after another.
struct Load {
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// Calls per client at most: the load ends by itself.
const MOST_CALLS: u32 = 200_000;

impl Load {
    fn start(outbound: &str, clients: usize) -> Self {
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (answered, failures, stop) = (answered.clone(), failures.clone(), stop.clone());
                let url = format!("http://{outbound}/");
                tokio::spawn(async move {
                    let client: Client<HttpConnector, Full<Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    for _ in 0..MOST_CALLS {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match call(&client, &url).await {
                            Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().expect("lock").push(e);
                                return;
                            }
                        };
                    }
                })
            })
            .collect();
        Self {
            answered,
            failures,
            stop,
            clients,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `more` calls beyond those answered now are answered (and none failed).
    async fn wait_for_more(&self, more: u64) {
        let target = self.answered() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.answered() < target {
            self.assert_no_failure();
            assert!(
                Instant::now() < deadline,
                "{} calls answered, {target} expected within a minute",
                self.answered()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_no_failure(&self) {
        let failures = self.failures.lock().expect("lock");
        assert!(failures.is_empty(), "calls failed: {failures:#?}");
    }

    async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            client.await.expect("client");
        }
        self.assert_no_failure();
        self.answered()
    }
}

/// One call of beta for user:alice; what went wrong, if anything did.
async fn call(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Result<(), String> {
    let request = http::Request::get(url)
        .header(http::header::HOST, "beta")
        .header("deputy-principal", "user:alice")
        .header("deputy-scope", "events:read")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the body broke off: {e:?}"))?
        .to_bytes();
    if status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Puts a new copy of deputyd at `path`, as a package upgrade does (written beside, renamed
/// over).
fn install(path: &Path) {
    let new = path.with_extension("dpkg-new");
    std::fs::copy(binary("deputyd"), &new).expect("copy deputyd");
    std::fs::rename(&new, path).expect("rename");
}

/// `deputyd --check`, as `ExecReload=` and `ExecStartPre=` run it.
fn check(deputyd: &Path, config: &Path) -> (bool, String) {
    let (status, output) = run(Command::new(deputyd)
        .arg("--check")
        .arg("--config")
        .arg(config));
    (status.success(), output)
}

/// Starts node1 under `supervisor` once `--check` passes, and waits until it is ready.
fn start(supervisor: &Supervisor, deputyd: &Path, config: &Path) -> Node {
    let (passed, output) = check(deputyd, config);
    assert!(passed, "ExecStartPre: {output}");
    let since = supervisor.messages();
    let node = Node::of(supervisor.start(deputyd, config));
    supervisor.wait_for("READY=1", since, Duration::from_secs(60));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_and_a_restart_under_keep_alive_load_fail_no_call() {
    let Mesh {
        issuer: _issuer,
        agents: _agents,
        node1,
        node2: _node2,
        dir,
    } = Mesh::start("1h");
    assert!(node1.process.stop().success());
    // node1 again, as its unit runs it: from a binary of its own, which the upgrade replaces.
    let config: PathBuf = dir.path().join("node1.toml");
    let deputyd = dir.path().join("deputyd");
    install(&deputyd);
    let supervisor = Supervisor::new(dir.path());
    let first = start(&supervisor, &deputyd, &config);
    let alpha = first.outbound_of("alpha");
    let mut process = first.process;
    let mut stored = supervisor.stored();
    stored.sort();
    assert_eq!(
        stored,
        [
            "admin",
            "inbound",
            "outbound.alpha",
            "outbound.gamma",
            "outbound.omega"
        ],
        "deputyd gave systemd every listening socket to keep"
    );

    let load = Load::start(&alpha, 4);
    load.wait_for_more(100).await;

    // The upgrade, with a configuration the new binary refuses: the reload stops at --check,
    // and the old deputyd goes on serving.
    install(&deputyd);
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{good}\n[limits]\ndrain_grace = \"2h\"\n")).expect("write");
    let (passed, output) = check(&deputyd, &config);
    assert!(!passed && output.contains("drain_grace"), "{output}");
    load.wait_for_more(100).await;
    assert!(process.is_running(), "{}", process.output.text());

    // Fixed: --check passes, SIGHUP; the old deputyd hands over and systemd starts the new one.
    std::fs::write(&config, &good).expect("write");
    let (passed, output) = check(&deputyd, &config);
    assert!(passed, "{output}");
    process.signal(Signal::SIGHUP);
    let status = process.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(75), "{}", process.output.text());
    assert!(
        process
            .output
            .text()
            .contains("deputyd's binary was replaced; handing the node over"),
        "{}",
        process.output.text()
    );
    let upgraded = start(&supervisor, &deputyd, &config);
    assert_eq!(upgraded.outbound_of("alpha"), alpha, "the same listener");
    load.wait_for_more(200).await;
    let log = upgraded.process.output.text();
    assert!(
        log.contains("listening socket taken over from systemd")
            && log.contains("name=\"outbound.alpha\"")
            && log.contains("name=\"outbound.omega\""),
        "{log}"
    );
    assert!(
        log.contains("agent=alpha") && log.contains("service=beta"),
        "the new deputyd serves the calls: {log}"
    );

    // `systemctl restart`: SIGTERM, drain, exit 0, start.
    assert!(upgraded.process.stop().success());
    let restarted = start(&supervisor, &deputyd, &config);
    assert_eq!(restarted.outbound_of("alpha"), alpha, "the same listener");
    load.wait_for_more(200).await;
    let answered = load.finish().await;
    assert!(answered >= 600, "{answered}");
    let mut stored_after = supervisor.stored();
    stored_after.sort();
    assert_eq!(stored_after, stored, "the same sockets kept, none twice");
    drop(restarted);
}
