//! The secrets part of `deputy dev`: with Vault (or OpenBao) and PostgreSQL installed, a dev
//! Vault and a throwaway PostgreSQL cluster, alpha logging in to Vault as itself, a KV secret
//! injected into alpha's calls to beta, and a database user of alpha's own behind a
//! PostgreSQL proxy alpha reaches with no password. Without them, it says what to install.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use super::process::{Managed, spawn, wait_for};

/// Ports of the secrets demo, from the base port (node1's free range).
pub(crate) const PROXY_OFFSET: u16 = 3;
const POSTGRES_OFFSET: u16 = 5;
/// Vault listens here, and on the next port for its cluster.
const VAULT_OFFSET: u16 = 6;

/// What the secrets demo needs, found on this machine.
pub(crate) struct Found {
    vault: PathBuf,
    pg_bin: PathBuf,
}

/// Vault on PATH (or built by scripts/peers) and PostgreSQL's server; `Err` says what is
/// missing and how to get it.
pub(crate) fn find() -> Result<Found, String> {
    let vault = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/deputy/peers/bin")))
        .flat_map(|dir| [dir.join("vault"), dir.join("bao")])
        .find(|p| p.is_file());
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|v| v.join("initdb").is_file());
    versions.sort();
    match (vault, versions.pop()) {
        (Some(vault), Some(pg_bin)) => Ok(Found { vault, pg_bin }),
        (vault, pg) => {
            let mut missing = Vec::new();
            if vault.is_none() {
                missing.push("Vault or OpenBao (`./scripts/peers vault` builds Vault 1.14.1)");
            }
            if pg.is_none() {
                missing.push("PostgreSQL (apt-get install postgresql)");
            }
            Err(format!(
                "the secrets demo is off: install {} and run deputy dev again",
                missing.join(" and ")
            ))
        }
    }
}

/// The running Vault and PostgreSQL.
pub(crate) struct Running {
    pub(crate) processes: Vec<Managed>,
    vault_addr: String,
    pg_port: u16,
    pg_socket: PathBuf,
    pg_bin: PathBuf,
}

fn as_postgres(command: &mut Command) -> anyhow::Result<()> {
    // PostgreSQL refuses to run as root: as root, the cluster is the postgres user's.
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")?
            .context("no postgres user (the postgresql package creates it)")?;
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    command.current_dir("/tmp");
    Ok(())
}

/// Starts PostgreSQL and a dev Vault in `dir`.
pub(crate) async fn start(found: Found, dir: &Path, base: u16) -> anyhow::Result<Running> {
    use std::os::unix::fs::PermissionsExt as _;
    let root = dir.join("postgres");
    let socket = root.join("sock");
    std::fs::create_dir_all(&socket)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    if nix::unistd::geteuid().is_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()?;
        if !status.success() {
            bail!("cannot give {} to the postgres user", root.display());
        }
    }
    let mut initdb = Command::new(found.pg_bin.join("initdb"));
    initdb.arg("-D").arg(root.join("data")).args([
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
    ]);
    as_postgres(&mut initdb)?;
    let mut init = spawn("initdb", &mut initdb, dir)?;
    if !init.child.wait().await?.success() {
        bail!("initdb failed; see {}", dir.join("initdb.log").display());
    }
    let pg_port = base + POSTGRES_OFFSET;
    let mut server = Command::new(found.pg_bin.join("postgres"));
    server
        .arg("-D")
        .arg(root.join("data"))
        .arg("-k")
        .arg(&socket)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            &pg_port.to_string(),
        ]);
    as_postgres(&mut server)?;
    let mut postgres = spawn("postgres", &mut server, dir)?;
    wait_for(&mut postgres, dir, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
            .await
            .is_ok()
    })
    .await?;
    let vault_addr = format!("127.0.0.1:{}", base + VAULT_OFFSET);
    let mut vault = spawn(
        "vault",
        Command::new(&found.vault)
            .current_dir(dir)
            .env("HOME", dir)
            .args([
                "server",
                "-dev",
                "-dev-no-store-token",
                "-dev-root-token-id=root",
            ])
            .arg(format!("-dev-listen-address={vault_addr}")),
        dir,
    )?;
    let health = vault_addr.clone();
    wait_for(&mut vault, dir, || {
        let addr = health.clone();
        async move {
            super::process::http_get(&addr, "/v1/sys/health")
                .await
                .is_some_and(|(code, _)| code == 200)
        }
    })
    .await?;
    Ok(Running {
        processes: vec![postgres, vault],
        vault_addr,
        pg_port,
        pg_socket: socket,
        pg_bin: found.pg_bin,
    })
}

impl Running {
    /// alpha's secrets sections, for node1's config.
    pub(crate) fn alpha_config(&self, base: u16) -> String {
        format!(
            "[[agent.secret]]\nname = \"crm\"\nkv = {{ path = \"agents/alpha\" }}\n\
             [[agent.secret]]\nname = \"tickets\"\ndatabase = {{ role = \"tickets-readonly\" }}\n\
             [[agent.inject]]\nservice = \"beta\"\nheader = \"authorization\"\n\
             value = \"Bearer {{{{ secret.crm.token }}}}\"\n\
             [[agent.postgres]]\nlisten = \"127.0.0.1:{proxy}\"\nupstream = \"127.0.0.1:{pg}\"\n\
             database = \"tickets\"\nsecret = \"tickets\"\n",
            proxy = base + PROXY_OFFSET,
            pg = self.pg_port,
        )
    }

    /// node1's `[vault]`.
    pub(crate) fn vault_config(&self) -> String {
        format!("[vault]\naddress = \"http://{}\"\n", self.vault_addr)
    }

    /// Configures Vault and PostgreSQL as an operator would (JWT auth reading node1's JWKS,
    /// a role bound to alpha's SPIFFE ID, the database engine, a KV secret).
    pub(crate) async fn configure(
        &self,
        node1_admin: &str,
        trust_domain: &str,
    ) -> anyhow::Result<()> {
        for sql in [
            "CREATE ROLE vaultadmin WITH LOGIN CREATEROLE PASSWORD 'dev-admin-password'",
            "CREATE DATABASE tickets OWNER vaultadmin",
        ] {
            self.psql("postgres", sql).await?;
        }
        self.psql(
            "tickets",
            "CREATE TABLE tickets (id int, customer text, subject text); \
             INSERT INTO tickets VALUES (1, 'acme', 'cannot log in'), (2, 'globex', 'refund'); \
             ALTER TABLE tickets OWNER TO vaultadmin",
        )
        .await?;
        let calls = [
            ("sys/auth/jwt", serde_json::json!({"type": "jwt"})),
            (
                "auth/jwt/config",
                serde_json::json!({"jwks_url": format!("http://{node1_admin}/jwks.json")}),
            ),
            (
                "sys/policies/acl/alpha",
                serde_json::json!({"policy": "path \"database/creds/tickets-readonly\" { capabilities = [\"read\"] }\npath \"secret/data/agents/alpha\" { capabilities = [\"read\"] }"}),
            ),
            (
                "auth/jwt/role/alpha",
                serde_json::json!({"role_type": "jwt", "bound_audiences": ["vault"],
                    "user_claim": "sub", "bound_subject": format!("spiffe://{trust_domain}/agent/alpha"),
                    "token_policies": ["alpha"], "token_ttl": "1h"}),
            ),
            (
                "sys/mounts/database",
                serde_json::json!({"type": "database"}),
            ),
            (
                "database/config/tickets",
                serde_json::json!({"plugin_name": "postgresql-database-plugin",
                    "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/tickets?sslmode=disable", self.pg_port),
                    "username": "vaultadmin", "password": "dev-admin-password",
                    "allowed_roles": ["tickets-readonly"]}),
            ),
            (
                "database/roles/tickets-readonly",
                serde_json::json!({"db_name": "tickets",
                    "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'", "GRANT SELECT ON tickets TO \"{{name}}\""],
                    "revocation_statements": ["REVOKE ALL ON tickets FROM \"{{name}}\"", "DROP ROLE IF EXISTS \"{{name}}\""],
                    "default_ttl": "2m", "max_ttl": "1h"}),
            ),
            (
                "secret/data/agents/alpha",
                serde_json::json!({"data": {"token": "dev-crm-token-only-beta-sees"}}),
            ),
        ];
        for (path, body) in calls {
            vault_post(&self.vault_addr, path, &body)
                .await
                .with_context(|| format!("configuring Vault: {path}"))?;
        }
        Ok(())
    }

    async fn psql(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        let mut command = Command::new(self.pg_bin.join("psql"));
        command
            .arg("-h")
            .arg(&self.pg_socket)
            .args([
                "-p",
                &self.pg_port.to_string(),
                "-d",
                database,
                "-U",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql]);
        as_postgres(&mut command)?;
        let out = command.output().await?;
        if !out.status.success() {
            bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

async fn vault_post(addr: &str, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "POST /v1/{path} HTTP/1.1\r\nHost: {addr}\r\nX-Vault-Token: root\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&code) {
        bail!(
            "Vault answered {code}: {}",
            response.split("\r\n\r\n").nth(1).unwrap_or("")
        );
    }
    Ok(())
}
