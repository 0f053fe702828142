//! Credentials per task (`per_task = true`) through a real Vault and a real PostgreSQL
//! (tests/src/secrets_setup.rs): a task's calls carry a database user of the task's own, which
//! is dropped when the task's chain expires; a database session that names its task's context
//! logs in as that user and is closed when the task ends.

use std::path::Path;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::secrets_setup::{
    Setup, TASK_PROXY_PORT, names, node_field, proxy_session, secret, secret_status, vault_users,
};
use deputy_tests::{audit_records, eventually, my_uid};
use http::StatusCode;

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
    // The audit trail has each task's credential issued (once: the second call used it) and
    // the short task's end, as they happened (the end is written once Vault answered the
    // token's revocation, which may be a moment after the user is gone).
    eventually(
        "the short task's end recorded",
        Duration::from_secs(10),
        || {
            let records = audit_records(&setup.dir.path().join("state"), "task_credential");
            let of = |task: &str, change: &str| {
                records
                    .iter()
                    .filter(|r| r["task"] == task && r["change"] == change && r["agent"] == "alpha")
                    .count()
            };
            let ended = of("short", "ended");
            assert!(ended <= 1, "{records:?}");
            (ended == 1).then(|| {
                assert_eq!(
                    (
                        of("short", "issued"),
                        of("long", "issued"),
                        of("long", "ended")
                    ),
                    (1, 1, 0),
                    "{records:?}"
                );
            })
        },
    );
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
    let dir = setup.dir.path().to_owned();

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

/// beta's call to alpha in `task` for alice (its link living 10 minutes): the context handle
/// alpha was handed.
async fn alpha_context(setup: &Setup, task: &str) -> String {
    let mut call = client::get("alpha", "/work", Protocol::Http1);
    for (name, value) in [
        ("deputy-principal", "user:alice@example.org"),
        ("deputy-scope", "reports:read"),
        ("deputy-task", task),
        ("deputy-task-ttl", "10m"),
    ] {
        call.headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    let beta = setup.node.outbound("beta");
    let response = client::send_as(my_uid() + 7000, &beta, Protocol::Http1, call)
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = setup.seen.lock().expect("lock");
    seen.last()
        .and_then(|head| {
            head.lines()
                .find_map(|line| line.strip_prefix("deputy-context: "))
        })
        .expect("alpha got a context")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tasks_sessions_close_and_its_user_is_dropped_while_another_task_keeps_its_own() {
    let setup = Setup::start("1h");
    setup.alpha_ready("t0ken-for-revocation");
    let dir = setup.dir.path().to_owned();
    let doomed = alpha_context(&setup, "doomed").await;
    let kept = alpha_context(&setup, "kept").await;
    let doomed_session = task_session(&dir, Some(&doomed)).await.expect("session");
    let kept_session = task_session(&dir, Some(&kept)).await.expect("session");
    let (doomed_user, kept_user) = (
        current_user(&doomed_session).await,
        current_user(&kept_session).await,
    );
    assert_ne!(doomed_user, kept_user);

    // The operator revokes the task: its token is revoked (Vault drops its user, its lease
    // with it) and its session is closed, at once rather than when its chain would expire.
    let (status, out) = deputy_tests::run(
        std::process::Command::new(deputy_tests::binary("deputy"))
            .args(["revoke", "--task", "doomed", "--reason", "exfiltration"])
            .arg("--socket")
            .arg(dir.join("operator.sock")),
    );
    assert!(status.success(), "{out}");
    let outcome: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(outcome["applied"]["task_credentials_ended"], 1, "{outcome}");
    eventually(
        "the revoked task's session closed",
        Duration::from_secs(10),
        || doomed_session.is_closed().then_some(()),
    );
    eventually(
        "the revoked task's user dropped",
        Duration::from_secs(10),
        || (!vault_users(&setup.pg).contains(&doomed_user)).then_some(()),
    );
    let refused = task_session(&dir, Some(&doomed))
        .await
        .expect_err("refused");
    assert!(
        format!("{refused:?}").contains("exfiltration"),
        "{refused:?}"
    );

    // The other task of the same agents keeps its session and its user.
    assert_eq!(names(&kept_session).await.expect("select"), ["one"]);
    assert!(vault_users(&setup.pg).contains(&kept_user));
}
