//! Secrets through a real Vault and a real PostgreSQL (tests/src/secrets_setup.rs): deputyd
//! logs in as the agent with its JWT-SVID (Vault reads the trust domain's keys from deputyd's
//! `/jwks.json`), obtains a database user of the agent's own and a KV secret, renews the 20 s
//! lease, injects the KV secret into the agent's calls, refuses a call whose credential it does
//! not hold, and revokes everything when it stops. Vault's audit log (raw) is the record of every
//! value issued; no other log of the run may hold one.

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::secrets_setup::{
    Setup, names, node_field, proxy_session, secret, secret_status, vault_users,
};
use deputy_tests::{eventually, http_get, my_uid};
use http::StatusCode;
use serde_json::json;

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
    let file = setup.dir.path().join("files/alpha/crm.env");
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
    // deputyd's trail records the calls that carried it (and, checked above, not the value).
    let trail = std::fs::read_to_string(dir.path().join("state/audit/audit.jsonl"))
        .expect("deputyd's audit trail");
    assert!(
        trail.contains("\"type\":\"call\"")
            && trail.contains("\"service\":\"echo\"")
            && trail.contains("\"type\":\"lease\"")
            && trail.contains("\"secret\":\"crm\""),
        "{trail}"
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
