//! A real Vault (built by `scripts/peers`) in dev mode on a loopback address of its own, and a
//! small client of its HTTP API for the tests to configure it as an operator would.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Process, peers::peer, unique_loopback_addr};

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("host:port")
}

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";

/// A running Vault dev server.
#[derive(Debug)]
pub struct Vault {
    /// The process.
    pub process: Process,
    /// `127.x.y.z:port`.
    pub addr: String,
}

impl Vault {
    /// Starts `vault server -dev` (in-memory, unsealed, KV v2 at `secret/`), run from `dir`.
    pub fn start(dir: &Path) -> Self {
        let addr = unique_loopback_addr();
        // Vault also binds its cluster listener on the next port: keep that one for it (the
        // addresses of one test process differ by port, one apart).
        let cluster = unique_loopback_addr();
        debug_assert!(cluster.ends_with(&(port_of(&addr) + 1).to_string()));
        let process = Process::spawn(
            Command::new(peer("vault"))
                .current_dir(dir)
                .env("HOME", dir)
                .args(["server", "-dev", "-dev-no-store-token"])
                .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
                .arg(format!("-dev-listen-address={addr}")),
        );
        process
            .output
            .wait_for("Vault server started!", Duration::from_secs(60));
        Self { process, addr }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One API call with the root token: status and body.
    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(&self.addr).expect("connect to Vault");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "{method} /v1/{path} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {ROOT_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    /// A call that must succeed (2xx).
    pub fn ok(&self, method: &str, path: &str, body: serde_json::Value) -> String {
        let (code, text) = self.call(method, path, Some(body));
        assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
        text
    }
}
