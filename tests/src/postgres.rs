//! A throwaway PostgreSQL cluster from Debian's packages (the test command installs them), run as
//! the `postgres` user (PostgreSQL refuses root) on a loopback address of its own; the tests'
//! own administration goes through its unix socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Process, run, unique_loopback_addr};

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    /// The server.
    pub process: Process,
    /// The loopback host it listens on.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The directory of its unix socket.
    pub socket_dir: PathBuf,
    /// Its data directory.
    data: PathBuf,
}

/// A PostgreSQL program of the newest installed version.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let path = versions
        .last()
        .map(|v| v.join("bin").join(name))
        .filter(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL's {name} is missing: the test command installs PostgreSQL from Debian's \
             packages (apt-get install postgresql)"
        )
    })
}

/// Starts the server on `data`, and waits until it accepts connections.
fn serve(data: &Path, socket_dir: &Path, host: &str, port: u16) -> Process {
    let process = Process::spawn(
        as_postgres(&pg_bin("postgres"))
            .current_dir("/tmp")
            .arg("-D")
            .arg(data)
            .arg("-k")
            .arg(socket_dir)
            .args(["-c", &format!("listen_addresses={host}")])
            .args(["-p", &port.to_string()]),
    );
    process.output.wait_for(
        "database system is ready to accept connections",
        Duration::from_secs(60),
    );
    process
}

/// `program` run as the `postgres` user (the process itself, so that stopping it stops the
/// server, not a wrapper).
fn as_postgres(program: &Path) -> Command {
    use std::os::unix::process::CommandExt as _;
    let user = nix::unistd::User::from_name("postgres")
        .expect("read the user database")
        .expect("a postgres user (the postgresql package creates it)");
    let mut command = Command::new(program);
    command
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .env("HOME", "/tmp");
    command
}

impl Postgres {
    /// initdb in `dir/pg` (host logins by SCRAM-SHA-256, socket logins trusted), then starts it.
    pub fn start(dir: &Path) -> Self {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let root = dir.join("pg");
        let data = root.join("data");
        let socket_dir = root.join("sock");
        std::fs::create_dir_all(&socket_dir).expect("mkdir");
        let (status, out) = run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root));
        assert!(status.success(), "chown: {out}");
        let (status, out) = run(as_postgres(&pg_bin("initdb"))
            .current_dir("/tmp")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ]));
        assert!(status.success(), "initdb: {out}");
        let addr = unique_loopback_addr();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let port: u16 = port.parse().expect("port");
        let process = serve(&data, &socket_dir, host, port);
        Self {
            process,
            host: host.to_owned(),
            port,
            socket_dir,
            data,
        }
    }

    /// Stops the server (fast shutdown: every session is ended) and starts it again where it
    /// was, as a restart for an upgrade does.
    pub fn restart(&mut self) {
        self.process.signal(nix::sys::signal::Signal::SIGINT);
        let status = self.process.wait(Duration::from_secs(60));
        assert!(status.success(), "PostgreSQL stopped: {status:?}");
        self.process = serve(&self.data, &self.socket_dir, &self.host, self.port);
    }

    /// Runs `sql` in `database` as the superuser, over the socket: the rows, `|`-separated.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let (status, out) = run(as_postgres(&pg_bin("psql"))
            .current_dir("/tmp")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-Atc", sql]));
        assert!(status.success(), "psql {sql}: {out}");
        out.trim().to_owned()
    }
}
