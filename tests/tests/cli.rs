//! The `deputy` and `deputyd` command lines, as an operator meets them.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use deputy_tests::{IssuerProcess, binary, eventually, run, write_entries};

#[test]
fn svid_fetch_writes_the_svid_key_and_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &[], "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let out = dir.path().join("out");
    let (status, text) = run(Command::new(binary("deputy"))
        .args(["svid", "fetch", "--socket"])
        .arg(issuer.workload_socket())
        .arg("--write")
        .arg(&out));
    assert!(status.success(), "{text}");
    assert!(
        text.contains("SPIFFE ID:         spiffe://example.org/deputyd/node1"),
        "{text}"
    );
    assert!(text.contains("SVID Valid Until:"), "{text}");
    let key_mode = std::fs::metadata(out.join("svid.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(out.join("svid.pem"))
            .expect("pem")
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        std::fs::read_to_string(out.join("bundle.pem"))
            .expect("bundle")
            .contains("BEGIN CERTIFICATE")
    );

    // The written SVID inspects as valid.
    let (status, text) = run(Command::new(binary("deputy"))
        .args(["svid", "inspect"])
        .arg(out.join("svid.pem")));
    assert!(status.success(), "{text}");
    assert!(
        text.contains("Verdict:            valid X.509-SVID"),
        "{text}"
    );
}

#[test]
fn jwt_fetch_and_validate_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &[], "1h", "1h");
    let issuer = IssuerProcess::start(dir.path());
    let socket = issuer.workload_socket();
    let (status, token) = run(Command::new(binary("deputy"))
        .args(["jwt", "fetch", "--audience", "billing", "--socket"])
        .arg(&socket));
    assert!(status.success(), "{token}");
    let token = token.trim();
    let (status, text) = run(Command::new(binary("deputy"))
        .args([
            "jwt",
            "validate",
            token,
            "--audience",
            "billing",
            "--socket",
        ])
        .arg(&socket));
    assert!(status.success(), "{text}");
    assert!(
        text.contains("SPIFFE ID: spiffe://example.org/deputyd/node1"),
        "{text}"
    );
    let (status, text) = run(Command::new(binary("deputy"))
        .args([
            "jwt",
            "validate",
            token,
            "--audience",
            "payments",
            "--socket",
        ])
        .arg(&socket));
    assert!(!status.success());
    assert!(text.contains("not \"payments\""), "{text}");
}

#[test]
fn svid_fetch_without_an_entry_says_what_to_register() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("entries.toml"),
        "[[entry]]\nspiffe_id = \"spiffe://example.org/x\"\nselectors = [\"unix:uid:4242\"]\n",
    )
    .expect("write");
    let issuer = IssuerProcess::start(dir.path());
    let (status, text) = run(Command::new(binary("deputy"))
        .args(["svid", "fetch", "--socket"])
        .arg(issuer.workload_socket()));
    assert!(!status.success());
    assert!(
        text.contains("no registration entry matches this process"),
        "{text}"
    );
}

#[test]
fn svid_fetch_with_no_issuer_says_where_it_looked() {
    let (status, text) = run(Command::new(binary("deputy")).args([
        "svid",
        "fetch",
        "--socket",
        "/nonexistent/deputy.sock",
    ]));
    assert!(!status.success());
    assert!(text.contains("unix:///nonexistent/deputy.sock"), "{text}");
}

#[test]
fn the_issuer_refuses_a_bad_entries_file_with_every_problem_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("entries.toml"),
        "[[entry]]\nspiffe_id = \"spiffe://Example.org/a\"\nselectors = [\"unix:uid:1\"]\n\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/a?x\"\nselectors = [\"unix:uid:1\"]\n",
    )
    .expect("write");
    let (status, text) = run(Command::new(binary("deputy"))
        .args([
            "issuer",
            "--trust-domain",
            "example.org",
            "--ephemeral",
            "--workload-socket",
        ])
        .arg(dir.path().join("w.sock"))
        .arg("--admin-socket")
        .arg(dir.path().join("a.sock"))
        .arg("--entries")
        .arg(dir.path().join("entries.toml")));
    assert!(!status.success());
    assert!(
        text.contains("line 2") && text.contains("upper-case"),
        "{text}"
    );
    assert!(text.contains("line 6") && text.contains("query"), "{text}");
}

#[test]
fn sighup_reloads_entries_and_a_bad_file_keeps_the_previous_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("entries.toml"),
        "[[entry]]\nspiffe_id = \"spiffe://example.org/x\"\nselectors = [\"unix:uid:4242\"]\n",
    )
    .expect("write");
    let issuer = IssuerProcess::start(dir.path());
    let fetch = || {
        run(Command::new(binary("deputy"))
            .args(["svid", "fetch", "--socket"])
            .arg(issuer.workload_socket()))
    };
    assert!(!fetch().0.success(), "not registered yet");

    write_entries(dir.path(), &[], "1h", "1h");
    issuer.process.signal(nix::sys::signal::Signal::SIGHUP);
    issuer
        .process
        .output
        .wait_for("entries reloaded", Duration::from_secs(10));
    let (status, text) = fetch();
    assert!(status.success(), "registered after SIGHUP: {text}");

    std::fs::write(
        dir.path().join("entries.toml"),
        "[[entry]]\nspiffe_id = 3\n",
    )
    .expect("write");
    issuer.process.signal(nix::sys::signal::Signal::SIGHUP);
    let line = issuer
        .process
        .output
        .wait_for("entries not reloaded", Duration::from_secs(10));
    assert!(line.contains("previous entries keep serving"), "{line}");
    assert!(
        issuer.process.output.text().contains("line 2"),
        "the log names the line"
    );
    assert!(fetch().0.success(), "the previous entries keep serving");
}

#[test]
fn deputyd_refuses_a_bad_config_listing_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("deputyd.toml");
    std::fs::write(
        &config,
        "trust_domain = \"example.org\"\n[admin]\nlisten = \"nowhere\"\n\
         [[agent]]\nname = \"a\"\nspiffe_id = \"spiffe://example.org/a/\"\nselectors = []\n",
    )
    .expect("write");
    let (status, text) = run(Command::new(binary("deputyd")).arg("--config").arg(&config));
    assert!(!status.success());
    for expected in [
        "3 problem(s)",
        "admin.listen",
        "trailing slash",
        "selectors is empty",
    ] {
        assert!(text.contains(expected), "{text}\nmissing {expected}");
    }
    std::fs::write(&config, "trust_domain = \"example.org\"\nadmn = 1\n").expect("write");
    let (status, text) = run(Command::new(binary("deputyd")).arg("--config").arg(&config));
    assert!(!status.success());
    assert!(text.contains("unknown field `admn`"), "{text}");
}

#[test]
fn svid_inspect_lists_every_reason_a_certificate_is_not_an_svid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![
        rcgen::SanType::URI("spiffe://example.org/a".try_into().expect("uri")),
        rcgen::SanType::URI("spiffe://example.org/b".try_into().expect("uri")),
    ];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params.self_signed(&key).expect("cert");
    let path = dir.path().join("bad.pem");
    std::fs::write(&path, cert.pem()).expect("write");
    let (status, text) = run(Command::new(binary("deputy"))
        .args(["svid", "inspect"])
        .arg(&path));
    assert!(!status.success(), "refused certificates exit non-zero");
    for expected in [
        "2 URI SANs",
        "expired",
        "lacks digitalSignature",
        "keyCertSign",
        "CA=true",
    ] {
        assert!(text.contains(expected), "{text}\nmissing {expected}");
    }
}

#[test]
fn deputy_dev_brings_up_a_two_node_mesh_that_carries_a_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 20 consecutive ports on 127.0.0.1, from the pid (parallel runs stay apart), between the
    // other tests' fixed ports (20000-29999, on other loopback addresses) and the kernel's
    // ephemeral range (32768 and up): no socket of the suite can take one first.
    let base = 30000 + (std::process::id() % 130) as u16 * 20;
    let mut dev = deputy_tests::Process::spawn(
        Command::new(binary("deputy"))
            .args(["dev", "--base-port", &base.to_string(), "--dir"])
            .arg(dir.path()),
    );
    dev.output
        .wait_for("Deputy dev mesh is up", Duration::from_secs(60));
    let curl = dev.output.wait_for("curl -s -x", Duration::from_secs(5));
    assert!(
        curl.contains(&format!("http://127.0.0.1:{} http://beta/hello", base + 1)),
        "{curl}"
    );
    dev.output.wait_for(
        "Deputy-Principal: user:alice@example.org",
        Duration::from_secs(5),
    );
    for admin in [base, base + 10] {
        let (code, body) = eventually("status answers", Duration::from_secs(10), || {
            deputy_tests::http_get(&format!("127.0.0.1:{admin}"), "/status")
        });
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(status["ready"], true, "{status}");
    }
    // What the printed curl command does: alpha calls beta through both nodes.
    let outbound = format!("127.0.0.1:{}", base + 1);
    let call = |headers: &[(&'static str, &'static str)]| {
        let mut request =
            deputy_tests::client::get("beta", "/hello", deputy_tests::client::Protocol::Http1);
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let response = deputy_tests::client::send(
                    &outbound,
                    deputy_tests::client::Protocol::Http1,
                    request,
                )
                .await
                .expect("call");
                deputy_tests::client::json(response).await
            })
    };
    let answer = call(&[]);
    assert_eq!(answer["agent"], "beta", "{answer}");
    assert_eq!(
        answer["caller"], "spiffe://example.org/agent/alpha",
        "{answer}"
    );
    // The suite's machines have Vault (scripts/peers) and PostgreSQL (the test command installs
    // it), so the secrets demo is on: beta received the credential alpha's deputyd injected
    // (its value is never shown), and alpha's database answers through its proxy, no password.
    dev.output
        .wait_for("Secrets (Vault dev server", Duration::from_secs(5));
    assert!(
        answer["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Bearer credential")),
        "{answer}"
    );
    assert!(!dev.output.text().contains("dev-crm-token-only-beta-sees"));
    let rows = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={} user=alpha dbname=tickets sslmode=disable",
                    base + 3
                ),
                tokio_postgres::NoTls,
            )
            .await
            .expect("a session through alpha's PostgreSQL proxy");
            tokio::spawn(connection);
            client
                .query("SELECT customer FROM tickets ORDER BY id", &[])
                .await
                .expect("SELECT")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        });
    assert_eq!(rows, ["acme", "globex"]);
    // And the printed task: beta sees the principal, its budget and a handle.
    let answer = call(&[
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "tickets:read"),
        ("deputy-budget", "3"),
    ]);
    let facts = &answer["deputy_headers"];
    assert_eq!(
        facts["deputy-principal"], "user:alice@example.org",
        "{answer}"
    );
    assert_eq!(facts["deputy-budget"], "3", "{answer}");
    assert!(facts["deputy-context"].is_string(), "{answer}");
    // The mesh enforces the shipped policy: the printed DELETE is refused with a decision id.
    dev.output
        .wait_for("-X DELETE http://beta/tickets/9", Duration::from_secs(5));
    let mut delete =
        deputy_tests::client::get("beta", "/tickets/9", deputy_tests::client::Protocol::Http1);
    *delete.method_mut() = http::Method::DELETE;
    let (status, refusal) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let response = deputy_tests::client::send(
                &outbound,
                deputy_tests::client::Protocol::Http1,
                delete,
            )
            .await
            .expect("call");
            (
                response.status(),
                deputy_tests::client::json(response).await,
            )
        });
    assert_eq!(status, http::StatusCode::FORBIDDEN, "{refusal}");
    assert_eq!(
        refusal["type"], "urn:deputy:problem:approval-required",
        "{refusal}"
    );
    assert!(refusal["decision_id"].is_string(), "{refusal}");
    dev.signal(nix::sys::signal::Signal::SIGINT);
    assert!(dev.wait(Duration::from_secs(20)).success());
}

#[test]
fn chain_inspect_shows_every_hop_and_names_the_broken_rule() {
    let vectors =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/delegation-vectors");
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(vectors.join("vectors.json")).expect("vectors"))
            .expect("json");
    let bundle = vectors.join("example.org.bundle.pem");
    let header = |name: &str| {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["header"].as_str())
            .expect("vector")
            .to_owned()
    };
    let (status, text) = run(Command::new(binary("deputy"))
        .args([
            "chain",
            "inspect",
            &header("valid-3-links"),
            "--at",
            "1800000000",
            "--bundle",
        ])
        .arg(&bundle));
    assert!(status.success(), "{text}");
    assert!(
        text.contains(
            "link 2: spiffe://example.org/agent/billing -> spiffe://example.org/agent/ledger"
        ),
        "{text}"
    );
    assert!(text.contains("verified: 3 link(s)"), "{text}");

    let (status, text) = run(Command::new(binary("deputy"))
        .args([
            "chain",
            "inspect",
            &header("swapped"),
            "--at",
            "1800000000",
            "--bundle",
        ])
        .arg(&bundle));
    assert!(!status.success());
    assert!(text.contains("prev does NOT match"), "{text}");
    assert!(text.contains("refused [broken_prev]"), "{text}");
}

#[test]
fn policy_check_eval_and_test_work_on_the_shipped_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy = root.join("policies/authz");
    let deputy = || {
        let mut command = Command::new(binary("deputy"));
        command.arg("policy");
        command
    };
    let (status, text) = run(deputy().arg("check").arg("--dir").arg(&policy));
    assert!(status.success(), "{text}");
    assert!(text.contains("entrypoint  deputy/authz/decision"), "{text}");
    assert!(text.contains("module      main.rego"), "{text}");
    assert!(
        !text.contains("authz_test.rego"),
        "tests are not served: {text}"
    );

    let (status, text) = run(deputy().arg("test").arg(&policy));
    assert!(status.success(), "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");

    // Exit 0 allowed, 2 denied, with the reasons printed.
    let case = |name: &str| {
        let text = std::fs::read_to_string(root.join(format!("policies/cases/{name}.json")))
            .expect("case");
        let case: serde_json::Value = serde_json::from_str(&text).expect("json");
        let path =
            std::env::temp_dir().join(format!("deputy-cli-{name}-{}.json", std::process::id()));
        std::fs::write(&path, case["input"].to_string()).expect("write");
        path
    };
    let allowed = case("support-reads-own-team-customer");
    let (status, text) = run(deputy()
        .arg("eval")
        .arg("--input")
        .arg(&allowed)
        .arg("--dir")
        .arg(&policy));
    assert_eq!(status.code(), Some(0), "{text}");
    let denied = case("support-on-sunday");
    let (status, text) = run(deputy()
        .arg("eval")
        .arg("--input")
        .arg(&denied)
        .arg("--dir")
        .arg(&policy));
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("business hours"), "{text}");
    let held = case("payment-needs-approval");
    let (status, text) = run(deputy()
        .arg("eval")
        .arg("--input")
        .arg(&held)
        .arg("--dir")
        .arg(&policy));
    assert_eq!(status.code(), Some(3), "allowed once approved: {text}");
    for path in [allowed, denied, held] {
        let _ = std::fs::remove_file(path);
    }

    // A bundle that is not there, or is not a bundle, is named with what to do.
    let (status, text) = run(deputy()
        .arg("check")
        .arg("--bundle")
        .arg(policy.join("main.rego")));
    assert!(!status.success());
    assert!(text.contains("not a gzip-compressed tar archive"), "{text}");
    assert!(text.contains("opa build -t wasm"), "{text}");
    let (status, text) = run(deputy()
        .arg("check")
        .arg("--dir")
        .arg(&policy)
        .arg("--bundle")
        .arg("b.tar.gz"));
    assert!(!status.success());
    assert!(text.contains("cannot be used with"), "{text}");
}

#[test]
fn an_agent_process_cannot_fetch_its_svid_from_the_shipped_entries() {
    // The review's reproduction: the shipped entries loaded, `deputy svid fetch` run as the
    // uid triage runs as (1001 in examples/deputyd.toml). The entries are delegated-only, so
    // nothing is served; deputyd's user still gets triage's SVID on the Delegated Identity API.
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/entries.toml");
    let uid = deputy_tests::my_uid();
    let entries = std::fs::read_to_string(shipped)
        .expect("shipped entries")
        .replace("unix:user:deputy", &format!("unix:uid:{uid}"));
    std::fs::write(dir.path().join("entries.toml"), entries).expect("write");
    let issuer = IssuerProcess::start(dir.path());
    let (status, text) = run(deputy_tests::deputy_as(1001, dir.path())
        .args(["svid", "fetch", "--socket"])
        .arg(issuer.workload_socket()));
    assert!(!status.success(), "uid 1001 was served:\n{text}");
    assert!(text.contains("no identity issued"), "{text}");
    assert!(!text.contains("agent/triage"), "{text}");
    assert!(
        text.contains("deputy:agent:NAME"),
        "the refusal says why: {text}"
    );
}

#[test]
fn the_command_a_missing_builtin_error_names_lists_what_each_engine_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    // opa.runtime would hand a wasm policy deputyd's environment: the wasm engine refuses it.
    let src = deputy_tests::opa::sources(
        dir.path(),
        "src",
        &[(
            "p.rego",
            "package deputy.authz\n\ndecision := {\"allow\": opa.runtime() != {}}\n",
        )],
        &[],
    );
    let bundle = deputy_tests::opa::build_wasm(dir.path(), "b.tar.gz", &[&src], &[]);
    let (status, text) = run(Command::new(binary("deputy"))
        .args(["policy", "check", "--bundle"])
        .arg(&bundle));
    assert!(!status.success(), "{text}");
    assert!(text.contains("does not provide: opa.runtime"), "{text}");
    // The command the error names, word for word.
    let named = text
        .split('`')
        .find(|part| part.starts_with("deputy policy"))
        .unwrap_or_else(|| panic!("the error names no command: {text}"));
    let mut words = named.split_whitespace().skip(1);
    let (status, table) = run(Command::new(binary("deputy")).args(words.by_ref()));
    assert!(status.success(), "`{named}`: {table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
    };
    assert_eq!(row("builtin"), Some(vec!["rego", "wasm"]), "{table}");
    assert_eq!(row("sprintf"), Some(vec!["yes", "yes"]), "{table}");
    assert_eq!(row("opa.runtime"), Some(vec!["yes", "no"]), "{table}");

    let (status, wasm) =
        run(Command::new(binary("deputy")).args(["policy", "builtins", "--engine", "wasm"]));
    assert!(status.success(), "{wasm}");
    assert!(wasm.lines().any(|l| l == "glob.match"), "{wasm}");
    assert!(!wasm.lines().any(|l| l == "http.send"), "{wasm}");
}
