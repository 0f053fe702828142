//! What every secrets test starts: a real Vault (dev server, built by `scripts/peers`), a
//! throwaway PostgreSQL cluster, the issuer and one deputyd whose agents declare secrets (alpha:
//! a database user, a KV secret, a per-task database secret, injections, a credential file and
//! two PostgreSQL proxies), an upstream that records what reached it, and an HTTPS tool outside
//! the mesh; Vault configured as its operator would, its raw audit log the record of every value
//! issued.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::https_tool::HttpsTool;
use crate::postgres::Postgres;
use crate::recording::RecordingServer;
use crate::vault::Vault;
use crate::{IssuerProcess, NodeProcess, eventually, http_get, my_uid, write_entries};

fn node_config(
    dir: &Path,
    vault: &Vault,
    pg: &Postgres,
    upstream: &str,
    saas: &HttpsTool,
) -> std::path::PathBuf {
    let uid = my_uid();
    let saas_ca = dir.join("saas-ca.pem");
    std::fs::write(&saas_ca, &saas.ca_pem).expect("write the tool's CA");
    let text = format!(
        r#"{head}[approvals]
socket = "{dir}/operator.sock"
operators = [{uid}]
[inbound]
listen = "127.0.0.1:0"
allow_peers = ["spiffe://example.org/agent/alpha", "spiffe://example.org/agent/beta"]

[[agent]]
name = "alpha"
spiffe_id = "spiffe://example.org/agent/alpha"
outbound = "127.0.0.1:0"
upstream = "http://{upstream}"
uids = [{uid}]
originate = ["user:*"]
[[agent.secret]]
name = "db"
database = {{ role = "readonly" }}
[[agent.secret]]
name = "crm"
kv = {{ path = "agents/alpha", refresh = "1s" }}
[[agent.secret]]
name = "taskdb"
database = {{ role = "readonly" }}
per_task = true
[[agent.inject]]
service = "reports"
header = "x-db-user"
value = "{{{{ secret.taskdb.username }}}}"
[[agent.file]]
path = "{dir}/files/alpha/crm.env"
contents = "CRM_TOKEN={{{{ secret.crm.token }}}}\n"
uid = {file_uid}
[[agent.inject]]
service = "echo"
header = "authorization"
value = "Bearer {{{{ secret.crm.token }}}}"
[[agent.inject]]
service = "saas"
header = "x-api-key"
value = "{{{{ secret.crm.token }}}}"
[[agent.postgres]]
listen = "127.0.0.1:0"
upstream = "{pg}"
database = "appdb"
secret = "db"
[[agent.postgres]]
listen = "unix://{dir}/.s.PGSQL.{task_port}"
upstream = "{pg}"
database = "appdb"
secret = "taskdb"

[[agent]]
name = "beta"
spiffe_id = "spiffe://example.org/agent/beta"
outbound = "127.0.0.1:0"
uids = [{}]
originate = ["user:*"]
[[agent.secret]]
name = "crm"
kv = {{ path = "agents/beta" }}
[[agent.inject]]
service = "echo"
header = "x-api-key"
value = "{{{{ secret.crm.token }}}}"

[[agent]]
name = "echo"
spiffe_id = "spiffe://example.org/agent/echo"
upstream = "http://{upstream}"

[[external]]
name = "saas"
url = "https://{saas}"
ca_file = "{saas_ca}"
callers = ["alpha"]

[[external]]
name = "reports"
url = "https://{saas}/reports"
ca_file = "{saas_ca}"
callers = ["alpha"]

[vault]
address = "{}"
timeout = "2s"
"#,
        uid + 7000,
        vault.url(),
        head = crate::node_config_head(dir),
        dir = dir.display(),
        pg = pg.host.clone() + ":" + &pg.port.to_string(),
        file_uid = uid + 7001,
        saas = saas.addr,
        saas_ca = saas_ca.display(),
        task_port = TASK_PROXY_PORT,
    );
    let path = dir.join("deputyd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// alpha's PostgreSQL proxy for its per-task secret listens on `DIR/.s.PGSQL.{this}`, where a
/// libpq client with `host=DIR port={this}` finds it.
pub const TASK_PROXY_PORT: u16 = 6543;

pub fn secret_status(admin: &str, agent: &str) -> serde_json::Value {
    crate::status_of(admin)["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("no secrets status for {agent}"))
        .clone()
}

pub fn secret<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .find(|s| s["name"] == name)
        .expect("the secret")
}

/// Vault configured as its operator would: JWT auth reading deputyd's JWKS, a role per agent
/// bound to its SPIFFE ID (alpha's first with the wrong audience), the database engine on the
/// test cluster, a KV secret, and a raw audit log of everything issued.
fn configure_vault(vault: &Vault, pg: &Postgres, admin: &str, audit: &Path, lease_ttl: &str) {
    vault.ok(
        "POST",
        "sys/audit/file",
        json!({"type": "file", "options": {"file_path": audit, "log_raw": true}}),
    );
    vault.ok("POST", "sys/auth/jwt", json!({"type": "jwt"}));
    eventually(
        "deputyd serves the JWT keys",
        Duration::from_secs(20),
        || http_get(admin, "/jwks.json").filter(|(code, _)| *code == 200),
    );
    vault.ok(
        "POST",
        "auth/jwt/config",
        json!({"jwks_url": format!("http://{admin}/jwks.json")}),
    );
    vault.ok(
        "POST",
        "sys/policies/acl/alpha",
        json!({"policy": "path \"database/creds/readonly\" { capabilities = [\"read\"] }\n\
                         path \"secret/data/agents/alpha\" { capabilities = [\"read\"] }"}),
    );
    vault.ok("POST", "auth/jwt/role/alpha", alpha_role("not-vault"));
    pg.psql(
        "postgres",
        "CREATE ROLE vaultadmin WITH LOGIN CREATEROLE PASSWORD 'admin-pw'",
    );
    pg.psql("postgres", "CREATE DATABASE appdb OWNER vaultadmin");
    pg.psql(
        "appdb",
        "CREATE TABLE items (id int, name text); INSERT INTO items VALUES (1, 'one'); \
         ALTER TABLE items OWNER TO vaultadmin",
    );
    vault.ok("POST", "sys/mounts/database", json!({"type": "database"}));
    vault.ok(
        "POST",
        "database/config/pg",
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/appdb?sslmode=disable",
                pg.host, pg.port
            ),
            "username": "vaultadmin",
            "password": "admin-pw",
            "allowed_roles": ["readonly"],
        }),
    );
    vault.ok(
        "POST",
        "database/roles/readonly",
        json!({
            "db_name": "pg",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                "GRANT SELECT ON items TO \"{{name}}\"",
            ],
            "revocation_statements": [
                "REVOKE ALL ON items FROM \"{{name}}\"",
                "DROP ROLE IF EXISTS \"{{name}}\"",
            ],
            "default_ttl": lease_ttl,
            "max_ttl": "1h",
        }),
    );
}

pub fn alpha_role(audience: &str) -> serde_json::Value {
    json!({
        "role_type": "jwt",
        "bound_audiences": [audience],
        "user_claim": "sub",
        "bound_subject": "spiffe://example.org/agent/alpha",
        "token_policies": ["alpha"],
        "token_ttl": "1h",
    })
}

/// The agent's database users, as PostgreSQL lists them (Vault names them `v-jwt-...`).
pub fn vault_users(pg: &Postgres) -> Vec<String> {
    let rows = pg.psql(
        "appdb",
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY rolname",
    );
    rows.lines().map(str::to_owned).collect()
}

/// What Vault's audit log shows it handed out: every value (tokens, the JWT-SVIDs it was sent,
/// passwords, KV data), and the database credentials as (username, password).
#[derive(Debug)]
pub struct Issued {
    /// Every value.
    pub values: Vec<String>,
    /// The database credentials, (username, password).
    pub database: Vec<(String, String)>,
}

pub fn issued(audit: &Path) -> Issued {
    let text = std::fs::read_to_string(audit).expect("audit log");
    let mut values = Vec::new();
    let mut database = Vec::new();
    for line in text.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("audit JSON");
        let response = &entry["response"];
        let data = &response["data"];
        let found = [
            response["auth"]["client_token"].as_str(),
            entry["request"]["data"]["jwt"].as_str(),
            data["password"].as_str(),
            data["data"]["token"].as_str(),
        ];
        values.extend(found.into_iter().flatten().map(str::to_owned));
        if let (Some(user), Some(password)) = (data["username"].as_str(), data["password"].as_str())
        {
            database.push((user.to_owned(), password.to_owned()));
        }
    }
    values.retain(|v| v.len() >= 8);
    values.sort();
    values.dedup();
    Issued { values, database }
}

/// Everything one test runs: PostgreSQL, Vault, the issuer, deputyd and the upstream.
#[derive(Debug)]
pub struct Setup {
    /// The throwaway PostgreSQL cluster.
    pub pg: Postgres,
    /// The Vault dev server.
    pub vault: Vault,
    /// The issuer.
    pub issuer: IssuerProcess,
    /// deputyd.
    pub node: NodeProcess,
    /// The header blocks the `echo` agent's upstream received.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// A tool outside the mesh, over HTTPS.
    pub saas: HttpsTool,
    /// Vault's raw audit log.
    pub audit: std::path::PathBuf,
    /// The directory holding everything.
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// Everything started and Vault configured (database leases of `lease_ttl`), alpha's role
    /// still on the wrong audience.
    pub fn start(lease_ttl: &str) -> Self {
        Self::start_with(lease_ttl, "1h")
    }

    /// As [`Setup::start`], the agents' SVIDs living `svid_ttl`.
    pub fn start_with(lease_ttl: &str, svid_ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let pg = Postgres::start(path);
        let vault = Vault::start(path);
        write_entries(path, &["alpha", "beta", "echo"], svid_ttl, "1h");
        let issuer = IssuerProcess::start(path);
        // Records what reached the service; the agent sees nothing but `ok`.
        let upstream = RecordingServer::start(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        );
        let (upstream, seen) = (upstream.addr, upstream.heads);
        let saas = HttpsTool::start(&[b"h2", b"http/1.1"]);
        let node = NodeProcess::start(&node_config(path, &vault, &pg, &upstream, &saas));
        let audit = path.join("vault-audit.log");
        configure_vault(&vault, &pg, &node.admin, &audit, lease_ttl);
        Self {
            pg,
            vault,
            issuer,
            node,
            seen,
            saas,
            audit,
            dir,
        }
    }

    /// alpha's role fixed, its KV secret written: waits until both its secrets are available.
    pub fn alpha_ready(&self, token: &str) -> serde_json::Value {
        self.vault.ok(
            "POST",
            "secret/data/agents/alpha",
            json!({"data": {"token": token}}),
        );
        self.vault
            .ok("POST", "auth/jwt/role/alpha", alpha_role("vault"));
        let admin = &self.node.admin;
        eventually("alpha's secrets available", Duration::from_secs(30), || {
            let status = secret_status(admin, "alpha");
            (secret(&status, "db")["state"] == "available"
                && secret(&status, "crm")["state"] == "available")
                .then_some(status)
        })
    }

    /// Stops deputyd; checks that no log of the run holds a value Vault issued. Returns what
    /// was issued, and PostgreSQL (still running, for checks after the stop).
    pub fn stop_and_check_logs(self) -> (Issued, Postgres, tempfile::TempDir) {
        let Setup {
            pg,
            vault,
            issuer,
            node,
            audit,
            dir,
            ..
        } = self;
        let log = node.process.output.clone();
        assert!(node.process.stop().success());
        let issued = issued(&audit);
        // deputyd's own audit trail records the calls that carried injected credentials, and
        // holds none of them.
        let trail = std::fs::read_to_string(dir.path().join("state/audit/audit.jsonl"))
            .expect("deputyd's audit trail");
        for (name, text) in [
            ("deputyd audit trail", trail),
            ("deputyd", log.text()),
            ("issuer", issuer.process.output.text()),
            ("vault", vault.process.output.text()),
            ("postgres", pg.process.output.text()),
        ] {
            for value in &issued.values {
                assert!(
                    !text.contains(value.as_str()),
                    "the {name} log holds an issued value"
                );
            }
        }
        (issued, pg, dir)
    }
}

pub async fn proxy_session(addr: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let (client, connection) = tokio_postgres::connect(
        &format!("host={host} port={port} user=alpha dbname=appdb sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn names(client: &tokio_postgres::Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub fn node_field(node: &NodeProcess, line: &str, key: &str) -> String {
    node.process
        .output
        .text()
        .lines()
        .find(|l| l.contains(line))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
        .unwrap_or_else(|| panic!("no {key} in a line with {line:?}"))
        .to_owned()
}
