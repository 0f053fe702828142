//! The processes `deputy dev` runs: started from this binary, logged to files, stopped with
//! SIGTERM when dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

/// A child process that is stopped (SIGTERM) when dropped.
pub(crate) struct Managed {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
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

pub(crate) fn spawn(
    name: &'static str,
    command: &mut Command,
    dir: &Path,
) -> anyhow::Result<Managed> {
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
pub(crate) async fn wait_for<F, Fut>(
    process: &mut Managed,
    dir: &Path,
    ready: F,
) -> anyhow::Result<()>
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
