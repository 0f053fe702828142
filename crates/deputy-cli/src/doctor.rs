//! `deputy doctor`: checks a node as its operator would, one thing at a time, and says what to
//! fix. It reads deputyd's configuration, then asks what runs: the identity sockets, deputyd's
//! admin endpoints (its SVIDs, policy and Vault secrets as `/status` shows them), the listeners,
//! the PostgreSQL proxies and their databases, the operator socket, the audit trail and the
//! clock. Exit 0 when nothing failed (warnings allowed), 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::dev::process::http_get;

/// Arguments of `deputy doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// deputyd's configuration file.
    #[arg(long, default_value = "/etc/deputy/deputyd.toml")]
    config: PathBuf,
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// The checks' findings, in order.
#[derive(Default)]
struct Report {
    lines: Vec<(Verdict, String, Option<String>)>,
}

impl Report {
    fn ok(&mut self, what: impl Into<String>) {
        self.lines.push((Verdict::Ok, what.into(), None));
    }

    fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines
            .push((Verdict::Warn, what.into(), Some(fix.into())));
    }

    fn fail(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines
            .push((Verdict::Fail, what.into(), Some(fix.into())));
    }

    fn print(&self) -> ExitCode {
        for (verdict, what, fix) in &self.lines {
            let tag = match verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("  {tag}  {what}");
            if let Some(fix) = fix {
                println!("        fix: {fix}");
            }
        }
        let failed = self.count(Verdict::Fail);
        let warned = self.count(Verdict::Warn);
        println!("{failed} problem(s), {warned} warning(s).");
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// `what` accepts connections, or fails with why and `fix`.
    fn reached(&mut self, result: Result<(), String>, what: String, fix: &str) {
        match result {
            Ok(()) => self.ok(format!("{what} accepts")),
            Err(e) => self.fail(format!("{what}: {e}"), fix),
        }
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.lines.iter().filter(|(v, ..)| *v == verdict).count()
    }
}

pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    println!("deputy doctor: {}", args.config.display());
    let mut report = Report::default();
    let config = match deputyd::Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                format!("the configuration does not load: {e}"),
                "fix the file as the error says (deputyd refuses to start with it)",
            );
            return Ok(report.print());
        }
    };
    report.ok(format!(
        "configuration loads (trust domain {}, {} agent(s))",
        config.trust_domain,
        config.proxy.agents.len()
    ));
    for (what, uri) in [
        ("Workload API", &config.identity.workload_api),
        (
            "Delegated Identity API",
            &config.identity.delegated_identity_api,
        ),
    ] {
        socket(&mut report, what, uri).await;
    }
    let status = admin(&mut report, &config).await;
    if let Some(status) = &status {
        identities(&mut report, status);
        policy(&mut report, &config, status);
        secrets(&mut report, status);
    }
    listeners(&mut report, &config).await;
    operator_socket(&mut report, &config);
    audit(&mut report, &config.audit.dir);
    clock(&mut report);
    Ok(report.print())
}

/// A unix socket named by a `unix://` URI answers a connection.
async fn socket(report: &mut Report, what: &str, uri: &str) {
    let Some(path) = uri.strip_prefix("unix://") else {
        report.warn(
            format!("{what} {uri} is not a unix socket; not checked"),
            "-",
        );
        return;
    };
    match accepts_unix(Path::new(path)).await {
        Ok(()) => report.ok(format!("{what} {uri} accepts connections")),
        Err(e) => report.fail(
            format!("{what} {uri}: {e}"),
            format!(
                "start the SPIRE agent (or `deputy issuer`) that serves {path}, or correct \
                 [identity] in the configuration; deputyd gets every SVID there"
            ),
        ),
    }
}

/// deputyd's `/readyz` and `/status`.
async fn admin(report: &mut Report, config: &deputyd::Config) -> Option<serde_json::Value> {
    let addr = config.admin_listen.to_string();
    let Some((code, body)) = http_get(&addr, "/readyz").await else {
        report.fail(
            format!("deputyd's admin listener {addr} does not answer"),
            "start deputyd (systemctl start deputyd; journalctl -u deputyd says why it stopped); \
             with [admin] listen on port 0, pass a configuration with a fixed port",
        );
        return None;
    };
    if code == 200 {
        report.ok(format!("deputyd is ready (admin {addr})"));
    } else {
        report.fail(
            format!("deputyd is not ready: {}", body.trim().replace('\n', "; ")),
            "see the identities below: deputyd waits for every SVID",
        );
    }
    let (_, body) = http_get(&addr, "/status").await?;
    serde_json::from_str(&body).ok()
}

fn identities(report: &mut Report, status: &serde_json::Value) {
    for identity in status["identities"].as_array().into_iter().flatten() {
        let name = identity["name"].as_str().unwrap_or("?");
        let id = identity["spiffe_id"].as_str().unwrap_or("?");
        let state = identity["state"].as_str().unwrap_or("?");
        let left = identity["expires_in_seconds"].as_i64();
        match (state, left) {
            ("available", Some(left)) if left > 60 => {
                report.ok(format!("SVID of {name} ({id}) valid for {left} s"));
            }
            ("available", left) => report.warn(
                format!("SVID of {name} ({id}) expires in {} s", left.unwrap_or(0)),
                "it should have rotated by now: check the SPIRE agent's (or issuer's) log",
            ),
            (state, _) => report.fail(
                format!(
                    "SVID of {name} ({id}) is {state}{}",
                    identity["last_error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                format!(
                    "register {id} (selector deputy:agent:{name}) with the issuer or SPIRE \
                     (`deputy agent add` prints how), and make deputyd an authorized delegate"
                ),
            ),
        }
    }
}

fn policy(report: &mut Report, config: &deputyd::Config, status: &serde_json::Value) {
    if config.policy.is_none() {
        report.warn(
            "no [policy]: calls are admitted by allow_peers and originate alone",
            "add [policy] with the shipped policies/authz (docs/policy.md)",
        );
        return;
    }
    let policy = &status["policy"];
    match policy["last_error"].as_str() {
        Some(error) => report.fail(
            format!(
                "the policy's last reload failed (revision {} keeps serving): {error}",
                policy["revision"].as_str().unwrap_or("?")
            ),
            "fix the policy files, check them with `deputy policy check --dir DIR`",
        ),
        None => report.ok(format!(
            "policy serving ({}, revision {})",
            policy["engine"].as_str().unwrap_or("?"),
            policy["revision"].as_str().unwrap_or("?")
        )),
    }
}

fn secrets(report: &mut Report, status: &serde_json::Value) {
    for agent in status["secrets"].as_array().into_iter().flatten() {
        let name = agent["agent"].as_str().unwrap_or("?");
        let login = &agent["login"];
        if login["state"] != "logged_in" {
            report.fail(
                format!(
                    "{name} is not logged in to Vault ({}){}",
                    login["state"].as_str().unwrap_or("?"),
                    login["last_error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                format!(
                    "Vault's role {} must accept {name}'s JWT-SVID (bound_subject, \
                     bound_audiences) and Vault must reach deputyd's /jwks.json",
                    agent["role"].as_str().unwrap_or("?")
                ),
            );
            continue;
        }
        for secret in agent["secrets"].as_array().into_iter().flatten() {
            let secret_name = secret["name"].as_str().unwrap_or("?");
            if secret["state"] == "available" {
                report.ok(format!("{name}'s secret {secret_name} is available"));
            } else {
                report.fail(
                    format!(
                        "{name}'s secret {secret_name} is {}{}",
                        secret["state"].as_str().unwrap_or("?"),
                        secret["last_error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                    format!(
                        "the Vault policy of {name}'s role must allow {}",
                        secret["path"].as_str().unwrap_or("its path")
                    ),
                );
            }
        }
    }
}

/// Whether something accepts TCP connections at `addr`, within a second.
async fn accepts(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 1 s".into()),
    }
}

async fn listeners(report: &mut Report, config: &deputyd::Config) {
    if let Some(inbound) = config.proxy.inbound.filter(|a| a.port() != 0) {
        let target = if inbound.ip().is_unspecified() {
            format!("127.0.0.1:{}", inbound.port())
        } else {
            inbound.to_string()
        };
        report.reached(
            accepts(&target).await,
            format!("inbound mTLS listener {inbound}"),
            "deputyd binds it at start: see its log (another process on the port?)",
        );
    }
    for proxy in &config.postgres {
        let (listen, bound) = match &proxy.listen {
            deputy_proxy::ListenAddr::Tcp(addr) => {
                (addr.to_string(), accepts(&addr.to_string()).await)
            }
            deputy_proxy::ListenAddr::Unix(path) => (
                format!("unix://{}", path.display()),
                accepts_unix(path).await,
            ),
        };
        report.reached(
            bound,
            format!("{}'s PostgreSQL proxy {listen}", proxy.agent),
            "deputyd starts it with [vault]; see its log",
        );
        let reachable = match &proxy.upstream {
            deputy_pgproxy::PgUpstream::Tcp(addr) => accepts(addr).await,
            deputy_pgproxy::PgUpstream::Unix(path) => accepts_unix(path).await,
        };
        report.reached(
            reachable,
            format!("PostgreSQL {} ({})", proxy.upstream, proxy.database),
            "start PostgreSQL, or correct the proxy's upstream",
        );
    }
}

/// Whether something accepts connections on the unix socket at `path`.
async fn accepts_unix(path: &Path) -> Result<(), String> {
    tokio::net::UnixStream::connect(path)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

fn operator_socket(report: &mut Report, config: &deputyd::Config) {
    let Some(path) = &config.approvals.socket else {
        report.warn(
            "no operator socket ([approvals] socket): approvals and revocations cannot be decided on this node",
            "set [approvals] socket and operators (docs/gateway.md)",
        );
        return;
    };
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => report.ok(format!(
            "operator socket {} ({} operator uid(s))",
            path.display(),
            config.approvals.operators.len()
        )),
        Ok(_) | Err(_) => report.fail(
            format!("operator socket {} is missing", path.display()),
            "deputyd creates it at start: is deputyd running with this configuration?",
        ),
    }
}

fn audit(report: &mut Report, dir: &Path) {
    let probe = dir.join(".doctor-probe");
    if let Err(e) = std::fs::write(&probe, b"") {
        report.fail(
            format!("audit trail {}: cannot write: {e}", dir.display()),
            "free the disk or fix the directory's owner: with on_failure = \"refuse\" \
             deputyd refuses calls while the trail cannot be written",
        );
        return;
    }
    let _ = std::fs::remove_file(&probe);
    match deputy_audit::verify::verify_dir(dir, None) {
        Ok(found) if found.first_bad.is_none() => report.ok(format!(
            "audit trail {} verifies ({} record(s))",
            dir.display(),
            found.records
        )),
        Ok(found) => report.fail(
            format!(
                "audit trail {} does not verify: {}",
                dir.display(),
                found
                    .first_bad
                    .map(|bad| format!("line {}: {}", bad.line, bad.why))
                    .unwrap_or_default()
            ),
            "keep the files as they are for an investigation; `deputy audit verify` names the record",
        ),
        Err(e) => report.warn(
            format!("audit trail {}: {e}", dir.display()),
            "deputyd writes it once it has served; check again later",
        ),
    }
}

/// Whether the clock is synchronized, as the time service says (systemd-timesyncd or chrony):
/// SVIDs, delegation links and checkpoints carry times, and a clock off by more than a minute
/// refuses links and revocations.
fn clock(report: &mut Report) {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let fix = "run an NTP client (chrony, systemd-timesyncd): links and revocations are refused \
               beyond a minute of skew";
    if let Some(synced) = run("timedatectl", &["show", "-p", "NTPSynchronized", "--value"]) {
        if synced == "yes" {
            report.ok("the clock is synchronized (timedatectl)");
        } else {
            report.warn("timedatectl says the clock is not synchronized", fix);
        }
    } else if let Some(tracking) = run("chronyc", &["-n", "tracking"]) {
        if tracking.contains("Normal") {
            report.ok("the clock is synchronized (chronyc tracking)");
        } else {
            report.warn("chrony says the clock is not synchronized", fix);
        }
    } else {
        report.warn(
            "no time service answered (timedatectl, chronyc): the clock's synchronization is unknown",
            fix,
        );
    }
}
