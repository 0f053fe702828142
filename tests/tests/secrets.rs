//! Secrets through a real Vault (dev server, built by `scripts/peers`) and a real PostgreSQL:
//! deputyd logs in as the agent with its JWT-SVID (Vault reads the trust domain's keys from
//! deputyd's `/jwks.json`), obtains a database user of the agent's own and a KV secret, renews
//! the 20 s lease, injects the KV secret into the agent's calls, refuses a call whose credential
//! it does not hold, and revokes everything when it stops. Vault's audit log (raw) is the record
//! of every value issued; no other log of the run may hold one.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::https_tool::HttpsTool;
use deputy_tests::postgres::Postgres;
use deputy_tests::vault::Vault;
use deputy_tests::{IssuerProcess, NodeProcess, eventually, http_get, my_uid, write_entries};
use http::StatusCode;
use serde_json::json;

/// An upstream that records each request's header block and answers `ok`, so that the test sees
/// what reached the service while the agent sees nothing but `ok`.
fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                // Names lower-cased (they are case-insensitive); values as they came.
                let line = match line.split_once(':') {
                    Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
                    None => line,
                };
                head.push_str(&line);
            }
            record.lock().expect("lock").push(head);
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (addr, seen)
}

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
        r#"trust_domain = "example.org"
[identity]
workload_api = "unix://{dir}/workload.sock"
delegated_identity_api = "unix://{dir}/admin.sock"
min_backoff = "100ms"
max_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
[state]
dir = "{dir}/state"
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
const TASK_PROXY_PORT: u16 = 6543;

fn secret_status(admin: &str, agent: &str) -> serde_json::Value {
    deputy_tests::status_of(admin)["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("no secrets status for {agent}"))
        .clone()
}

fn secret<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
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

fn alpha_role(audience: &str) -> serde_json::Value {
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
fn vault_users(pg: &Postgres) -> Vec<String> {
    let rows = pg.psql(
        "appdb",
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY rolname",
    );
    rows.lines().map(str::to_owned).collect()
}

/// What Vault's audit log shows it handed out: every value (tokens, the JWT-SVIDs it was sent,
/// passwords, KV data), and the database credentials as (username, password).
struct Issued {
    values: Vec<String>,
    database: Vec<(String, String)>,
}

fn issued(audit: &Path) -> Issued {
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
struct Setup {
    pg: Postgres,
    vault: Vault,
    issuer: IssuerProcess,
    node: NodeProcess,
    seen: Arc<Mutex<Vec<String>>>,
    /// A tool outside the mesh, over HTTPS.
    saas: HttpsTool,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Everything started and Vault configured (database leases of `lease_ttl`), alpha's role
    /// still on the wrong audience.
    fn start(lease_ttl: &str) -> Self {
        Self::start_with(lease_ttl, "1h")
    }

    /// As [`Setup::start`], the agents' SVIDs living `svid_ttl`.
    fn start_with(lease_ttl: &str, svid_ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let pg = Postgres::start(path);
        let vault = Vault::start(path);
        write_entries(path, &["alpha", "beta", "echo"], svid_ttl, "1h");
        let issuer = IssuerProcess::start(path);
        let (upstream, seen) = recording_upstream();
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
            _dir: dir,
        }
    }

    /// alpha's role fixed, its KV secret written: waits until both its secrets are available.
    fn alpha_ready(&self, token: &str) -> serde_json::Value {
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
    fn stop_and_check_logs(self) -> (Issued, Postgres, tempfile::TempDir) {
        let Setup {
            pg,
            vault,
            issuer,
            node,
            audit,
            _dir,
            ..
        } = self;
        let log = node.process.output.clone();
        assert!(node.process.stop().success());
        let issued = issued(&audit);
        for (name, text) in [
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
        (issued, pg, _dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_shows_on_status_and_only_the_service_sees_an_injected_credential() {
    let setup = Setup::start("20s");
    let admin = setup.node.admin.clone();
    // The role wants another audience: the login is refused, and /status says why.
    let refused = eventually("alpha's login refused", Duration::from_secs(30), || {
        let status = secret_status(&admin, "alpha");
        (status["login"]["state"] == "failed"
            && status["login"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("audience")))
        .then_some(status)
    });
    assert!(
        refused["login"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 400")),
        "{refused}"
    );
    let token = "crm-token-7d1e4b2a9c";
    let ready = setup.alpha_ready(token);
    assert_eq!(ready["login"]["state"], "logged_in", "{ready}");

    // The KV secret goes into alpha's calls to echo; alpha gets only the answer.
    let call = client::get("echo", "/tickets", Protocol::Http1);
    let response = client::send(&setup.node.outbound("alpha"), Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = format!("{:?}", response.headers());
    assert_eq!(client::text(response).await, "ok");
    assert!(!headers.contains(token), "{headers}");
    let received = setup.seen.lock().expect("lock").clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].contains(&format!("authorization: Bearer {token}")),
        "{received:?}"
    );

    // And into its calls to a tool outside the mesh, over HTTPS, with the task's id.
    let mut call = client::get("saas", "/v1/contacts", Protocol::Http1);
    call.headers_mut()
        .insert("deputy-principal", "user:alice".parse().expect("value"));
    call.headers_mut()
        .insert("deputy-scope", "crm:read".parse().expect("value"));
    let response = client::send(&setup.node.outbound("alpha"), Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client::text(response).await, "ok");
    let received = setup.saas.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].headers["x-api-key"], token);
    assert!(
        received[0].headers.contains_key("deputy-task"),
        "{received:?}"
    );

    // The agent cannot have its credential echoed back (TRACE) nor dropped on the way
    // (`Connection: authorization` would make a hop-by-hop header of it).
    let mut trace = client::get("echo", "/tickets", Protocol::Http1);
    *trace.method_mut() = http::Method::TRACE;
    let outbound = setup.node.outbound("alpha");
    let response = client::send(&outbound, Protocol::Http1, trace)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(!client::text(response).await.contains(token));
    let mut hop = client::get("echo", "/tickets", Protocol::Http1);
    hop.headers_mut()
        .insert("connection", "authorization".parse().expect("value"));
    let response = client::send(&outbound, Protocol::Http1, hop)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let last = setup
        .seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(
        last.contains(&format!("authorization: Bearer {token}")),
        "{last}"
    );
    assert_eq!(setup.seen.lock().expect("lock").len(), 2, "TRACE was sent");

    // beta's credential does not exist (no Vault role for beta): its call is refused and
    // never reaches echo.
    let call = client::get("echo", "/tickets", Protocol::Http1);
    let beta = setup.node.outbound("beta");
    let response = client::send_as(my_uid() + 7000, &beta, Protocol::Http1, call)
        .await
        .expect("call");
    client::expect_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "secret-unavailable",
        "x-api-key",
    )
    .await;
    assert_eq!(
        setup.seen.lock().expect("lock").len(),
        2,
        "beta's call was sent"
    );

    // The file for alpha's own use: the credential, mode 0400, owned by the uid given.
    let file = setup._dir.path().join("files/alpha/crm.env");
    let rendered = std::fs::read_to_string(&file).expect("the credential file");
    assert_eq!(rendered, format!("CRM_TOKEN={token}\n"));
    let meta = std::fs::metadata(&file).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o400);
    assert_eq!(meta.uid(), my_uid() + 7001);

    // A new version of the KV secret (read again every second) reaches the file and the
    // calls.
    let rotated = "crm-token-rotated-51c0e8";
    setup.vault.ok(
        "POST",
        "secret/data/agents/alpha",
        json!({"data": {"token": rotated}}),
    );
    eventually("the file re-rendered", Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| t.contains(rotated))
    });
    let call = client::get("echo", "/tickets", Protocol::Http1);
    let outbound = setup.node.outbound("alpha");
    let response = client::send(&outbound, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let last = setup
        .seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(
        last.contains(&format!("authorization: Bearer {rotated}")),
        "{last}"
    );

    let (issued, _pg, dir) = setup.stop_and_check_logs();
    assert!(
        issued.values.iter().any(|v| v == token),
        "the KV secret is in the audit log"
    );
    assert!(
        issued.values.iter().any(|v| v == rotated),
        "the new version too"
    );
    // Withdrawn when deputyd stops: no file holds a credential nobody renews.
    assert!(!dir.path().join("files/alpha/crm.env").exists());
    assert!(
        issued.values.len() >= 3,
        "a JWT-SVID, a token and the KV secret at least"
    );
}

/// A session through the auth proxy, as the agent opens it: no password.
async fn proxy_session(addr: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let (client, connection) = tokio_postgres::connect(
        &format!("host={host} port={port} user=alpha dbname=appdb sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn names(client: &tokio_postgres::Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reads_its_database_as_a_user_of_its_own_whose_sessions_end_with_its_lease() {
    let setup = Setup::start("20s");
    let ready = setup.alpha_ready("crm-token-unused-here");
    assert!(secret(&ready, "db")["expires_at"].is_string(), "{ready}");
    let admin = setup.node.admin.clone();
    let proxy = node_field(&setup.node, "PostgreSQL proxy bound", "postgres=");

    // A database user of the agent's own, which may read and not write.
    let users = vault_users(&setup.pg);
    assert_eq!(users.len(), 1, "{users:?}");
    assert!(users[0].contains("readonly"), "{users:?}");
    let session = proxy_session(&proxy)
        .await
        .expect("a session through the proxy");
    assert_eq!(names(&session).await.expect("SELECT"), ["one"]);
    let insert = session
        .execute("INSERT INTO items VALUES (2, 'two')", &[])
        .await
        .expect_err("INSERT is refused");
    assert!(
        insert.to_string().contains("permission denied")
            || format!("{insert:?}").contains("permission denied"),
        "{insert:?}"
    );

    // The 20 s lease is renewed (at about two thirds): the same user, the same open session.
    let renewed = eventually("two renewals", Duration::from_secs(60), || {
        let status = secret_status(&admin, "alpha");
        (secret(&status, "db")["renewals"].as_u64() >= Some(2)).then_some(status)
    });
    assert_eq!(secret(&renewed, "db")["generation"], 1, "{renewed}");
    assert_eq!(vault_users(&setup.pg), users);
    assert_eq!(
        names(&session).await.expect("SELECT after renewals"),
        ["one"]
    );
    let metrics = http_get(&admin, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains("deputy_secret_renewals_total{agent=\"alpha\",secret=\"db\"}"),
        "{metrics}"
    );

    // An operator revokes the lease in Vault: the user is dropped, deputyd notices at the next
    // renewal, closes the session opened with it, and issues a new user for new sessions.
    setup.vault.ok(
        "PUT",
        "sys/leases/revoke-prefix/database/creds/readonly",
        json!({}),
    );
    assert!(vault_users(&setup.pg).is_empty());
    eventually(
        "a new credential after the revoke",
        Duration::from_secs(30),
        || {
            let status = secret_status(&admin, "alpha");
            (secret(&status, "db")["generation"].as_u64() >= Some(2)).then_some(())
        },
    );
    assert!(
        session.is_closed() || names(&session).await.is_err(),
        "the session outlived its credential"
    );
    let fresh = proxy_session(&proxy)
        .await
        .expect("a session on the new credential");
    assert_eq!(names(&fresh).await.expect("SELECT"), ["one"]);
    let new_users = vault_users(&setup.pg);
    assert_eq!(new_users.len(), 1, "{new_users:?}");
    assert_ne!(new_users, users);

    // deputyd stops: its token is revoked with its leases, the user is gone and its password
    // no longer logs in.
    let (issued, pg, _dir) = setup.stop_and_check_logs();
    assert!(fresh.is_closed() || names(&fresh).await.is_err());
    assert!(vault_users(&pg).is_empty(), "{:?}", vault_users(&pg));
    let (user, password) = issued
        .database
        .iter()
        .find(|(user, _)| *user == new_users[0])
        .expect("the new user's credential in the audit log");
    let direct = tokio_postgres::connect(
        &format!(
            "host={} port={} user={user} password={password} dbname=appdb sslmode=disable",
            pg.host, pg.port
        ),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(direct.is_err(), "a revoked credential still logs in");
}

fn node_field(node: &NodeProcess, line: &str, key: &str) -> String {
    node.process
        .output
        .text()
        .lines()
        .find(|l| l.contains(line))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
        .unwrap_or_else(|| panic!("no {key} in a line with {line:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_vault_is_stopped_for_a_minute_valid_credentials_stay_in_use_and_nothing_is_lost() {
    use nix::sys::signal::Signal;
    // A 75 s lease: its renewal falls due during the outage and is retried until Vault is back,
    // before the lease ends.
    let setup = Setup::start("75s");
    let token = "crm-token-outage-3f9a";
    setup.alpha_ready(token);
    let admin = setup.node.admin.clone();
    let proxy = node_field(&setup.node, "PostgreSQL proxy bound", "postgres=");
    let session = proxy_session(&proxy).await.expect("a session");
    let users = vault_users(&setup.pg);

    // Stopped, not killed: the dev server keeps its state in memory, and a stopped process
    // answers nothing, as a Vault that is down or partitioned away.
    setup.vault.process.signal(Signal::SIGSTOP);
    let outage = std::time::Instant::now();
    let outbound = setup.node.outbound("alpha");
    let unreachable = eventually("a failed renewal shown", Duration::from_secs(80), || {
        let status = secret_status(&admin, "alpha");
        secret(&status, "db")["last_error"]
            .as_str()
            .filter(|e| e.contains("did not answer"))
            .map(|_| status.clone())
    });
    assert_eq!(
        secret(&unreachable, "db")["state"],
        "available",
        "{unreachable}"
    );
    // Everything still works on the credentials deputyd holds: the open session, a new
    // session, an injected call.
    assert_eq!(names(&session).await.expect("SELECT"), ["one"]);
    let during = proxy_session(&proxy)
        .await
        .expect("a new session during the outage");
    assert_eq!(names(&during).await.expect("SELECT"), ["one"]);
    let call = client::get("echo", "/tickets", Protocol::Http1);
    let response = client::send(&outbound, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let left = Duration::from_secs(60).saturating_sub(outage.elapsed());
    tokio::time::sleep(left).await;
    setup.vault.process.signal(Signal::SIGCONT);

    // Back: the same lease renewed, the error cleared, the same user, the same sessions.
    let recovered = eventually(
        "the lease renewed after the outage",
        Duration::from_secs(30),
        || {
            let status = secret_status(&admin, "alpha");
            let db = secret(&status, "db");
            (db["last_error"].is_null() && db["renewals"].as_u64() >= Some(1))
                .then_some(status.clone())
        },
    );
    assert_eq!(secret(&recovered, "db")["generation"], 1, "{recovered}");
    assert_eq!(vault_users(&setup.pg), users);
    assert_eq!(
        names(&session).await.expect("SELECT after the outage"),
        ["one"]
    );
    assert_eq!(
        names(&during).await.expect("SELECT after the outage"),
        ["one"]
    );
    let _ = setup.stop_and_check_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_rotation_logs_in_again_and_keeps_the_credentials_in_use() {
    // 6 s SVIDs, rotated every few seconds: each rotation logs alpha in to Vault again.
    let setup = Setup::start_with("20s", "6s");
    setup.alpha_ready("crm-token-rotation-77ab");
    let admin = setup.node.admin.clone();
    let proxy = node_field(&setup.node, "PostgreSQL proxy bound", "postgres=");
    let session = proxy_session(&proxy).await.expect("a session");
    let users = vault_users(&setup.pg);
    let rotated = eventually(
        "logins after rotations, and a renewal",
        Duration::from_secs(60),
        || {
            let status = secret_status(&admin, "alpha");
            (status["login"]["logins"].as_u64() >= Some(3)
                && secret(&status, "db")["renewals"].as_u64() >= Some(1))
            .then_some(status)
        },
    );
    // The database credential is the same one, renewed under the token that issued it (Vault
    // would revoke it with that token), and its session goes on.
    assert_eq!(secret(&rotated, "db")["generation"], 1, "{rotated}");
    assert_eq!(vault_users(&setup.pg), users);
    assert_eq!(
        names(&session).await.expect("SELECT after rotations"),
        ["one"]
    );
    // Tokens that hold nothing are revoked as they are replaced: Vault holds the root token,
    // the one the lease belongs to, and the current one.
    let (code, text) = setup.vault.call("LIST", "auth/token/accessors", None);
    assert_eq!(code, 200, "{text}");
    let tokens: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let count = tokens["data"]["keys"].as_array().map_or(0, Vec::len);
    assert!(count <= 3, "{count} tokens left in Vault: {text}");
    let _ = setup.stop_and_check_logs();
}

/// A call of alpha's to `reports` in `task` (started for alice, its link living `ttl`), or in
/// no task.
async fn report_call(
    setup: &Setup,
    task: Option<(&str, &str)>,
) -> http::Response<hyper::body::Incoming> {
    let mut call = client::get("reports", "/daily", Protocol::Http1);
    if let Some((task, ttl)) = task {
        for (name, value) in [
            ("deputy-principal", "user:alice@example.org"),
            ("deputy-scope", "reports:read"),
            ("deputy-task", task),
            ("deputy-task-ttl", ttl),
        ] {
            call.headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
    }
    client::send(&setup.node.outbound("alpha"), Protocol::Http1, call)
        .await
        .expect("call")
}

fn tasks_holding_credentials(admin: &str) -> Vec<String> {
    deputy_tests::status_of(admin)["task_secrets"]
        .as_array()
        .expect("task_secrets")
        .iter()
        .map(|t| t["task"].as_str().expect("task").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_gets_a_database_user_of_its_own_which_is_dropped_when_its_chain_expires() {
    let setup = Setup::start("1h");
    setup.alpha_ready("t0ken-for-tasks");
    let admin = setup.node.admin.clone();

    // A call in no task cannot carry a per-task credential: refused, never sent.
    let response = report_call(&setup, None).await;
    client::expect_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "secret-unavailable",
        "belongs to no task",
    )
    .await;
    assert!(setup.saas.received().is_empty());

    // Task "short" (its link lives 15 s, time enough for what follows on a loaded machine):
    // two calls, one database user of its own.
    for _ in 0..2 {
        let response = report_call(&setup, Some(("short", "15"))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Task "long": another user.
    let response = report_call(&setup, Some(("long", "10m"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let users: Vec<String> = setup
        .saas
        .received()
        .iter()
        .map(|r| r.headers["x-db-user"].to_str().expect("user").to_owned())
        .collect();
    assert_eq!(users.len(), 3, "{users:?}");
    assert_eq!(users[0], users[1], "one user per task: {users:?}");
    assert_ne!(users[0], users[2], "a user per task: {users:?}");
    let (short_user, long_user) = (users[0].clone(), users[2].clone());
    let standing = vault_users(&setup.pg);
    for user in [&short_user, &long_user] {
        assert!(standing.contains(user), "{user} not in {standing:?}");
    }
    let mut tasks = tasks_holding_credentials(&admin);
    tasks.sort();
    assert_eq!(tasks, ["long", "short"]);

    // The short task's chain expires: its user is dropped (its token revoked, and its lease
    // with it), and it holds nothing any more; the long task keeps its own.
    eventually(
        "the short task's user dropped",
        Duration::from_secs(30),
        || (!vault_users(&setup.pg).contains(&short_user)).then_some(()),
    );
    assert_eq!(tasks_holding_credentials(&admin), ["long"]);
    assert!(vault_users(&setup.pg).contains(&long_user));
    // alpha's standing database secret is untouched by either task.
    let status = secret_status(&admin, "alpha");
    assert_eq!(secret(&status, "db")["state"], "available", "{status}");
    assert_eq!(secret(&status, "db")["generation"], 1, "{status}");

    // deputyd stops: the long task's credentials are revoked too, and no log holds a value.
    let (_, pg, _dir) = setup.stop_and_check_logs();
    assert!(
        !vault_users(&pg).contains(&long_user),
        "{:?}",
        vault_users(&pg)
    );
}

/// A session through alpha's per-task proxy, naming the task by `context`.
async fn task_session(
    dir: &Path,
    context: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let options = context.map_or_else(String::new, |c| {
        format!(" options='-c search_path=public -c deputy.context={c}'")
    });
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={TASK_PROXY_PORT} user=alpha dbname=appdb{options}",
            dir.display()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_session_naming_its_task_logs_in_as_the_tasks_user_and_ends_with_the_task() {
    let setup = Setup::start("1h");
    setup.alpha_ready("t0ken-for-sessions");
    let dir = setup._dir.path().to_owned();

    // beta starts a task for alice whose chain lives 15 s (time enough for what follows on a
    // loaded machine), and calls alpha: alpha is handed the task's context.
    let mut call = client::get("alpha", "/work", Protocol::Http1);
    for (name, value) in [
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "reports:read"),
        ("deputy-task-ttl", "15"),
    ] {
        call.headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    let beta = setup.node.outbound("beta");
    let response = client::send_as(my_uid() + 7000, &beta, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let handle = setup
        .seen
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|head| head.lines())
        .find_map(|line| line.strip_prefix("deputy-context: "))
        .expect("alpha got a context")
        .trim()
        .to_owned();

    // A session that names no task cannot use a per-task secret; it is told how to name one.
    let refused = task_session(&dir, None).await.expect_err("refused");
    assert!(
        format!("{refused:?}").contains("deputy.context"),
        "{refused:?}"
    );

    // Named by its context, a session logs in as the task's own user (not alpha's standing
    // one); a second session of the task is the same user.
    let session = task_session(&dir, Some(&handle)).await.expect("session");
    let user = current_user(&session).await;
    assert_eq!(names(&session).await.expect("select"), ["one"]);
    let second = task_session(&dir, Some(&handle)).await.expect("session");
    assert_eq!(current_user(&second).await, user);
    let standing = proxy_session(&node_field(
        &setup.node,
        "PostgreSQL proxy bound",
        "postgres=",
    ))
    .await
    .expect("standing session");
    assert_ne!(current_user(&standing).await, user);
    assert!(vault_users(&setup.pg).contains(&user));

    // The task's chain expires: its sessions are closed and its user is dropped; alpha's
    // standing session goes on.
    eventually(
        "the task's sessions closed",
        Duration::from_secs(60),
        || (session.is_closed() && second.is_closed()).then_some(()),
    );
    eventually("the task's user dropped", Duration::from_secs(30), || {
        (!vault_users(&setup.pg).contains(&user)).then_some(())
    });
    assert_eq!(names(&standing).await.expect("select"), ["one"]);
    let ended = task_session(&dir, Some(&handle))
        .await
        .expect_err("refused");
    assert!(format!("{ended:?}").contains("expired"), "{ended:?}");
}
