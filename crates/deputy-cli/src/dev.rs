//! `deputy dev`: a local mesh on one machine, for trying Deputy and for developing against it.
//!
//! It starts real processes from this binary: an embedded issuer and one deputyd node fronting
//! two sample agents, in a temporary directory, and stays up until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

const TRUST_DOMAIN: &str = "example.org";
const AGENTS: [&str; 2] = ["alpha", "beta"];

/// Arguments of `deputy dev`.
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Keep state and logs in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port of deputyd's admin listener on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Managed {
    name: &'static str,
    child: Child,
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("deputy-dev-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let uid = nix::unistd::geteuid().as_raw();
    let exe = std::env::current_exe().context("cannot find the deputy binary")?;
    let workload_socket = dir.join("workload.sock");
    let admin_socket = dir.join("admin.sock");
    let entries = dir.join("entries.toml");
    let config = dir.join("deputyd.toml");
    std::fs::write(&entries, entries_toml(uid))?;
    std::fs::write(
        &config,
        deputyd_toml(&workload_socket, &admin_socket, args.admin_port),
    )?;

    let mut issuer = spawn(
        "issuer",
        Command::new(&exe)
            .arg("issuer")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(dir.join("ca"))
            .arg("--workload-socket")
            .arg(&workload_socket)
            .arg("--admin-socket")
            .arg(&admin_socket)
            .arg("--entries")
            .arg(&entries),
        &dir,
    )?;
    wait_for(&mut issuer, &dir, || async {
        tokio::net::UnixStream::connect(&workload_socket)
            .await
            .is_ok()
    })
    .await?;

    let mut node = spawn(
        "deputyd",
        Command::new(&exe).arg("node").arg("--config").arg(&config),
        &dir,
    )?;
    let admin = format!("127.0.0.1:{}", args.admin_port);
    wait_for(&mut node, &dir, || async {
        http_get(&admin, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await?;

    print_summary(&dir, &workload_socket, &admin_socket, &admin, uid);

    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        status = issuer.child.wait() => Some(("issuer", status)),
        status = node.child.wait() => Some(("deputyd", status)),
    };
    if let Some((name, status)) = outcome {
        eprintln!(
            "{name} exited ({}); see {}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            dir.join(format!("{name}.log")).display()
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("\nstopping");
    drop(node);
    drop(issuer);
    Ok(ExitCode::SUCCESS)
}

fn entries_toml(uid: u32) -> String {
    let mut out = format!(
        "# Written by `deputy dev`. deputyd is attested by its uid; the sample agents by the\n\
         # systemd units they would run as in production.\n\n\
         [[entry]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/deputyd/node1\"\nselectors = [\"unix:uid:{uid}\"]\n\n"
    );
    for agent in AGENTS {
        out.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{agent}\"\n\
             selectors = [\"systemd:id:deputy-dev-{agent}.service\"]\nx509_ttl = \"10m\"\n\n"
        ));
    }
    out.push_str(&format!("[[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"));
    out
}

fn deputyd_toml(workload: &Path, admin_socket: &Path, admin_port: u16) -> String {
    let mut out = format!(
        "# Written by `deputy dev`.\ntrust_domain = \"{TRUST_DOMAIN}\"\n\n[identity]\n\
         workload_api = \"unix://{}\"\ndelegated_identity_api = \"unix://{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n",
        workload.display(),
        admin_socket.display()
    );
    for agent in AGENTS {
        out.push_str(&format!(
            "[[agent]]\nname = \"{agent}\"\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{agent}\"\n\
             selectors = [\"systemd:id:deputy-dev-{agent}.service\"]\n\n"
        ));
    }
    out
}

fn spawn(name: &'static str, command: &mut Command, dir: &Path) -> anyhow::Result<Managed> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Managed { name, child })
}

/// Waits until `ready` holds, failing early (with the log's tail) if the process exits.
async fn wait_for<F, Fut>(process: &mut Managed, dir: &Path, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if ready().await {
            return Ok(());
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            bail!(
                "{} exited during start-up ({status}):\n{}",
                process.name,
                log_tail(dir, process.name)
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not become ready within 30s:\n{}",
                process.name,
                log_tail(dir, process.name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A minimal HTTP/1.0 GET on loopback: status code and body.
pub(crate) async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

fn print_summary(dir: &Path, workload: &Path, admin_socket: &Path, admin: &str, uid: u32) {
    println!("Deputy dev mesh is up (trust domain {TRUST_DOMAIN}). Ctrl-C stops it.\n");
    println!("  state and logs       {}", dir.display());
    println!(
        "  issuer               Workload API        unix://{}",
        workload.display()
    );
    println!(
        "                       Delegated Identity  unix://{}",
        admin_socket.display()
    );
    println!("  deputyd (node1)      admin               http://{admin}");
    println!(
        "                       SPIFFE ID           spiffe://{TRUST_DOMAIN}/deputyd/node1 (unix:uid:{uid})"
    );
    for agent in AGENTS {
        println!(
            "  agent {agent:<14} SPIFFE ID           spiffe://{TRUST_DOMAIN}/agent/{agent} (systemd:id:deputy-dev-{agent}.service)"
        );
    }
    println!("\nTry:");
    println!("  curl -s http://{admin}/status");
    println!("  curl -s http://{admin}/metrics | grep deputy_svid");
    println!("  deputy svid fetch --socket {}", workload.display());
    println!(
        "  deputy jwt fetch --audience billing --socket {}",
        workload.display()
    );
}
