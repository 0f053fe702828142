//! Helpers for the end-to-end tests: Deputy's binaries as real processes, synchronised on what
//! they report (log lines, sockets, HTTP endpoints), never on sleeps.
//!
//! The binaries come from the same target directory as the test executable; the README's test
//! command builds them first (`cargo build --workspace --bins`).

pub mod chain;
pub mod client;
pub mod https_tool;
pub mod mesh;
pub mod netns;
pub mod opa;
pub mod opa_abi;
pub mod peers;
pub mod policed;
pub mod postgres;
pub mod python;
pub mod recording;
pub mod secrets_setup;
pub mod spire;
pub mod sse;
pub mod supervisor;
pub mod tls_client;
pub mod vault;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A command that runs deputyd with `config`. With `DEPUTY_TEST_DEPUTYD_WRAPPER` set, that
/// program is run instead, with deputyd's path and arguments after its own: a profiler's
/// launcher (heaptrack's preload, for one) that must `exec` deputyd, so that the process the
/// tests watch and signal is deputyd's.
pub fn deputyd_command(config: &Path) -> Command {
    let mut command = match std::env::var_os("DEPUTY_TEST_DEPUTYD_WRAPPER") {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.arg(binary("deputyd"));
            command
        }
        None => Command::new(binary("deputyd")),
    };
    command.arg("--config").arg(config);
    command
}

/// The value of the metric lines of Prometheus text `metrics` that start with `prefix` (a name,
/// or a name with its labels), summed over them; 0 if there is none.
pub fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The path of one of Deputy's binaries (`deputy` or `deputyd`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Everything a process wrote to stderr and stdout, readable while it runs.
#[derive(Debug, Clone, Default)]
pub struct Output(Arc<(Mutex<String>, Condvar)>);

impl Output {
    fn collect(&self, stream: impl std::io::Read + Send + 'static) {
        let shared = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let (text, changed) = &*shared;
                let mut text = text.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&line);
                text.push('\n');
                changed.notify_all();
            }
        });
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the process writes more (or `timeout` passes).
    pub fn wait_changed(&self, timeout: Duration) {
        let (text, changed) = &*self.0;
        let guard = text.lock().unwrap_or_else(|p| p.into_inner());
        let before = guard.len();
        let _ = changed
            .wait_timeout_while(guard, timeout, |t| t.len() == before)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Waits until the output contains `needle`; returns the line that holds it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (text, changed) = &*self.0;
        let mut guard = text.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = guard.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out after {timeout:?} waiting for {needle:?}; output so far:\n{}",
                *guard
            );
            guard = changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A child process, stopped with SIGKILL if the test forgets to stop it.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    /// Its output.
    pub output: Output,
}

impl Process {
    /// Starts `command` with its output collected.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn");
        let output = Output::default();
        output.collect(child.stdout.take().expect("stdout"));
        output.collect(child.stderr.take().expect("stderr"));
        Self {
            child: Some(child),
            output,
        }
    }

    /// The process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("wait").is_none())
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}; output:\n{}",
                self.output.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion: exit status and combined output.
pub fn run(command: &mut Command) -> (ExitStatus, String) {
    let output = command.stdin(Stdio::null()).output().expect("run");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// A plain HTTP/1.0 GET: status code and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// Polls `check` until it returns `Some`, at most `timeout`; `what` names the wait in failures.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback address no other process of the suite uses, for a process that must be told its
/// address before another starts (two nodes that call each other).
///
/// Not a port the kernel picked and released: another socket (a client's ephemeral source port
/// included) may take such a port before the process binds it, and the test fails. This one is
/// outside the kernel's ephemeral range (ports 20000 to 29999), on an address of 127.0.0.0/8 made
/// from this test process's id, with a counter for the addresses one process asks for.
pub fn unique_loopback_addr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(
        n < 10_000,
        "more unique loopback addresses than one test process needs"
    );
    let [a, b, c] = loopback_host_of(std::process::id());
    format!("127.{a}.{b}.{c}:{}", 20_000 + n)
}

/// The three low octets of a loopback address of its own for process `pid`: distinct pids get
/// distinct addresses (pids stay below 2^22, `pid_max`'s ceiling), and the last octet is never
/// 0 or 255, which some code reads as a network or broadcast address.
fn loopback_host_of(pid: u32) -> [u32; 3] {
    const HOSTS: u32 = 254;
    let (rest, host) = (pid / HOSTS, pid % HOSTS + 1);
    [rest / 256, rest % 256, host]
}

#[cfg(test)]
mod tests {
    use super::loopback_host_of;

    #[test]
    fn every_pid_gets_its_own_loopback_address() {
        let mut taken = vec![false; 1 << 24];
        // pid_max is at most 2^22 on Linux.
        for pid in 0..(1u32 << 22) {
            let [a, b, c] = loopback_host_of(pid);
            assert!(
                a < 256 && b < 256 && (1..=254).contains(&c),
                "pid {pid}: {a}.{b}.{c}"
            );
            let slot = &mut taken[((a << 16) | (b << 8) | c) as usize];
            assert!(!*slot, "pid {pid} shares 127.{a}.{b}.{c}");
            *slot = true;
        }
    }
}

/// The effective uid of the tests, which the issuer attests them and their children as.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A `deputy issuer` process serving from a directory.
#[derive(Debug)]
pub struct IssuerProcess {
    /// The process.
    pub process: Process,
    /// Its directory (sockets, entries, CA).
    pub dir: PathBuf,
}

impl IssuerProcess {
    /// Starts `deputy issuer` in `dir` with the entries already written to `dir/entries.toml`,
    /// and waits until it serves.
    pub fn start(dir: &Path) -> Self {
        let process = Process::spawn(
            Command::new(binary("deputy"))
                .arg("issuer")
                .args(["--trust-domain", "example.org"])
                .arg("--data-dir")
                .arg(dir.join("ca"))
                .arg("--workload-socket")
                .arg(dir.join("workload.sock"))
                .arg("--admin-socket")
                .arg(dir.join("admin.sock"))
                .arg("--entries")
                .arg(dir.join("entries.toml")),
        );
        process
            .output
            .wait_for("issuer serving", Duration::from_secs(20));
        Self {
            process,
            dir: dir.to_owned(),
        }
    }

    /// The Workload API socket path.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("workload.sock")
    }
}

/// A deputyd process with its admin address.
#[derive(Debug)]
pub struct NodeProcess {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:port` of the admin listener.
    pub admin: String,
}

impl NodeProcess {
    /// Starts `deputyd --config` and waits until its admin listener is bound.
    pub fn start(config: &Path) -> Self {
        let process = Process::spawn(&mut deputyd_command(config));
        let line = process
            .output
            .wait_for("deputyd started", Duration::from_secs(20));
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .expect("admin address in the start line")
            .to_owned();
        Self { process, admin }
    }

    /// `/status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        status_of(&self.admin)
    }

    /// The status of one identity by name (`deputyd` or an agent's name).
    pub fn identity(&self, name: &str) -> serde_json::Value {
        identity_of(&self.admin, name)
    }

    /// Where `agent`'s outbound listener is bound, as deputyd logged it.
    pub fn outbound(&self, agent: &str) -> String {
        self.process
            .output
            .text()
            .lines()
            .find(|l| {
                l.contains("outbound listener bound") && l.contains(&format!("agent={agent}"))
            })
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("outbound="))
            })
            .unwrap_or_else(|| panic!("no outbound listener for {agent}"))
            .to_owned()
    }
}

/// `/status` of the deputyd whose admin listener is `admin`, parsed.
pub fn status_of(admin: &str) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status").expect("GET /status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// The status of one identity by name (`deputyd` or an agent's name) at `admin`.
pub fn identity_of(admin: &str, name: &str) -> serde_json::Value {
    status_of(admin)["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no identity {name}"))
        .clone()
}

/// A command that runs the `deputy` CLI as another user (`uid`), as an agent process would;
/// see [`program_as`].
pub fn deputy_as(uid: u32, dir: &Path) -> Command {
    program_as(uid, dir, &binary("deputy"))
}

/// A command that runs `program` as another user (`uid`), as an agent process would: the
/// program is copied into `dir`, which is opened so that `uid` can reach it and the sockets in
/// it (the build and peer directories are usually private to their owner). Needs root, as the
/// suite does.
pub fn program_as(uid: u32, dir: &Path, program: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    assert_eq!(
        my_uid(),
        0,
        "running a process as uid {uid} needs root; run the suite as ./scripts/test does"
    );
    let name = program.file_name().expect("a program file");
    let copy = dir.join(format!("{}-as-{uid}", name.to_string_lossy()));
    std::fs::copy(program, &copy).expect("copy the program");
    for path in [dir, copy.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut command = Command::new(copy);
    command.uid(uid).gid(uid);
    command
}

/// Writes an entries file registering deputyd (by uid, also as delegate) and agents under
/// `deputy:agent:NAME` (delegated-only), each agent with `agent_ttl`.
pub fn write_entries(dir: &Path, agents: &[&str], agent_ttl: &str, node_ttl: &str) {
    let uid = my_uid();
    let mut text = format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/deputyd/node1\"\nselectors = [\"unix:uid:{uid}\"]\nx509_ttl = \"{node_ttl}\"\n\n"
    );
    for agent in agents {
        text.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/agent/{agent}\"\nselectors = [\"deputy:agent:{agent}\"]\nx509_ttl = \"{agent_ttl}\"\n\n"
        ));
    }
    text.push_str(&format!("[[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"));
    std::fs::write(dir.join("entries.toml"), text).expect("write entries");
}

/// The start of a deputyd config for the issuer in `dir`: the trust domain, its sockets (quick
/// backoffs), the admin listener on an ephemeral port, and the state directory `dir/state`.
pub fn node_config_head(dir: &Path) -> String {
    format!(
        "trust_domain = \"example.org\"\n[identity]\nworkload_api = \"unix://{}\"\n\
         delegated_identity_api = \"unix://{}\"\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
        dir.join("workload.sock").display(),
        dir.join("admin.sock").display(),
        dir.join("state").display()
    )
}

/// Writes a deputyd config for the issuer in `dir`, admin on an ephemeral port, and returns
/// its path.
pub fn write_node_config(dir: &Path, agents: &[&str]) -> PathBuf {
    let mut text = node_config_head(dir);
    for agent in agents {
        text.push_str(&format!(
            "[[agent]]\nname = \"{agent}\"\nspiffe_id = \"spiffe://example.org/agent/{agent}\"\n"
        ));
    }
    let path = dir.join("deputyd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The records of the audit trail deputyd keeps in `state_dir` (its default place), of type
/// `kind`, oldest first.
pub fn audit_records(state_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let path = state_dir.join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the audit trail {}: {e}", path.display()));
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON record"))
        .filter(|record| record["type"] == kind)
        .collect()
}
