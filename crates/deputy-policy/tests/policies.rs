//! The shipped policies, the decision cases, and every kind of bad policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deputy_policy::rego::{RegoPolicy, run_tests};
use deputy_policy::{Decision, Engine as _, LoadError, Policy, PolicyInput, PolicySource};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/authz")
}

fn cases() -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cases");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let case: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            (
                case["name"].as_str().expect("name").to_owned(),
                case["input"].clone(),
                case["expect"].clone(),
            )
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(cases.len() >= 10, "the decision cases are missing");
    cases
}

#[test]
fn the_shipped_policy_passes_its_own_rego_tests() {
    let outcomes = run_tests(&shipped()).expect("loads");
    assert!(outcomes.len() >= 10, "{outcomes:?}");
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn every_decision_case_decides_as_expected_and_enforcement_reads_it_strictly() {
    let policy = RegoPolicy::load(&shipped()).expect("loads");
    for (name, input, expect) in cases() {
        // Each case's input is a valid version-1 document.
        let typed: PolicyInput = serde_json::from_value(input.clone())
            .unwrap_or_else(|e| panic!("{name}: not a version-1 input: {e}"));
        let raw = policy.evaluate(&input).expect("evaluates");
        assert_eq!(raw.as_ref(), Some(&expect), "{name}");
        let enforced = Decision::from_result(raw.as_ref());
        assert_eq!(enforced.allow, expect["allow"] == true, "{name}");
        assert_eq!(
            enforced.needs_approval(),
            expect["approval"]["required"] == true,
            "{name}: the approval obligation is read"
        );
        assert_eq!(typed.version, 1);
    }
}

fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

const ALLOW_ALL: &str =
    "package deputy.authz\nimport rego.v1\ndecision := {\"allow\": true, \"reasons\": [\"ok\"]}\n";

fn input() -> PolicyInput {
    let (_, input, _) = cases().remove(0);
    serde_json::from_value(input).expect("input")
}

#[test]
fn broken_policies_are_refused_at_load_with_what_is_wrong() {
    let syntax = policy_dir(&[(
        "authz.rego",
        "package deputy.authz\nimport rego.v1\ndecision := {\n",
    )]);
    let e = RegoPolicy::load(syntax.path()).expect_err("syntax");
    assert!(matches!(e, LoadError::Compile(_)), "{e}");
    assert!(e.to_string().contains("authz.rego"), "names the file: {e}");

    let other = policy_dir(&[("x.rego", "package other\nimport rego.v1\nallow := true\n")]);
    let e = RegoPolicy::load(other.path()).expect_err("no entrypoint");
    assert!(matches!(e, LoadError::MissingEntrypoint { .. }), "{e}");
    assert!(e.to_string().contains("data.other"), "{e}");

    let no_rule = policy_dir(&[(
        "x.rego",
        "package deputy.authz\nimport rego.v1\nallow := true\n",
    )]);
    assert!(
        RegoPolicy::load(no_rule.path()).is_err(),
        "a package without `decision`"
    );

    let unknown = policy_dir(&[(
        "x.rego",
        "package deputy.authz\nimport rego.v1\ndecision := {\"allow\": crypto.no_such_builtin(input.x)}\n",
    )]);
    // regorus resolves functions when it evaluates, not when it compiles: the load succeeds,
    // and every decision then denies, naming the missing function (fail closed).
    let policy = Policy::load(PolicySource::RegoDir(unknown.path().into())).expect("loads");
    let record = policy.decide(&input());
    assert!(!record.decision.allow);
    assert!(
        record.decision.reasons[0].contains("no_such_builtin"),
        "{:?}",
        record.decision.reasons
    );

    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        RegoPolicy::load(empty.path()),
        Err(LoadError::NoModules { .. })
    ));

    let data = policy_dir(&[("x.rego", ALLOW_ALL), ("data.json", "[1, 2]")]);
    assert!(matches!(
        RegoPolicy::load(data.path()),
        Err(LoadError::Data { .. })
    ));
}

#[test]
fn results_that_are_not_decisions_deny_and_say_why() {
    for (rego, expected) in [
        ("decision := true\n", "not an object"),
        ("decision := {\"reasons\": [\"x\"]}\n", "no boolean `allow`"),
        (
            "decision := {\"allow\": true} if input.never\n",
            "undefined",
        ),
    ] {
        let dir = policy_dir(&[(
            "x.rego",
            &format!("package deputy.authz\nimport rego.v1\n{rego}"),
        )]);
        let policy = Policy::load(PolicySource::RegoDir(dir.path().into())).expect("loads");
        let record = policy.decide(&input());
        assert!(!record.decision.allow, "{rego}");
        assert!(
            record.decision.reasons.iter().any(|r| r.contains(expected)),
            "{rego}: {:?}",
            record.decision.reasons
        );
    }
}

#[test]
fn a_policy_that_never_finishes_is_cut_off_and_denies() {
    let dir = policy_dir(&[(
        "x.rego",
        "package deputy.authz\nimport rego.v1\n\
         decision := {\"allow\": count([[x, y] | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0}\n",
    )]);
    assert!(
        RegoPolicy::load(dir.path()).expect("loads").uses_vm(),
        "the register VM runs it"
    );
    let policy = Policy::load_with(
        PolicySource::RegoDir(dir.path().into()),
        Duration::from_millis(200),
    )
    .expect("loads");
    let record = policy.decide(&input());
    assert!(!record.decision.allow);
    assert!(
        record.took < Duration::from_secs(10),
        "bounded, not run to the end"
    );
    assert!(
        record.decision.reasons[0].contains("time limit"),
        "{:?} after {:?}",
        record.decision.reasons,
        record.took
    );
}

#[test]
fn the_shipped_policy_runs_on_the_register_vm() {
    assert!(RegoPolicy::load(&shipped()).expect("loads").uses_vm());
}

#[test]
fn an_oversized_input_is_denied_unevaluated() {
    let dir = policy_dir(&[("x.rego", ALLOW_ALL)]);
    let policy = Policy::load(PolicySource::RegoDir(dir.path().into())).expect("loads");
    let mut big = input();
    big.request.path = format!("/{}", "a".repeat(100 * 1024));
    let record = policy.decide(&big);
    assert!(!record.decision.allow);
    assert!(
        record.decision.reasons[0].contains("more than"),
        "{:?}",
        record.decision.reasons
    );
    assert!(policy.decide(&input()).decision.allow);
}

#[tokio::test]
async fn a_broken_update_keeps_the_last_good_policy_and_a_good_one_is_picked_up() {
    let deny_all = "package deputy.authz\nimport rego.v1\ndecision := {\"allow\": false, \"reasons\": [\"closed\"]}\n";
    let dir = policy_dir(&[("x.rego", deny_all)]);
    let policy = Arc::new(Policy::load(PolicySource::RegoDir(dir.path().into())).expect("loads"));
    let first = policy.revision();
    assert!(!policy.decide(&input()).decision.allow);

    // A broken file: refused, and the deny-all policy keeps deciding.
    std::fs::write(
        dir.path().join("x.rego"),
        "package deputy.authz\ndecision := {\n",
    )
    .expect("write");
    assert!(policy.reload().is_err());
    assert_eq!(policy.revision(), first);
    assert!(policy.last_error().is_some());
    let record = policy.decide(&input());
    assert!(
        !record.decision.allow,
        "nothing the last good policy denied is allowed"
    );
    assert_eq!(
        record.revision, first,
        "the revision is part of every decision"
    );

    // The watcher notices a good file and serves it.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(policy.clone().watch(Duration::from_millis(50), stopped));
    std::fs::write(dir.path().join("x.rego"), ALLOW_ALL).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while policy.revision() == first {
        assert!(tokio::time::Instant::now() < deadline, "reload not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(policy.decide(&input()).decision.allow);
    assert!(policy.last_error().is_none());
    let _ = stop.send(());
    watcher.await.expect("watcher stops");
}

/// Every key of `value` (recursively) is a property the schema declares at the same place.
fn undeclared(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = format!("{at}.{key}");
                match schema["properties"].get(key) {
                    Some(child_schema) => undeclared(child, child_schema, &path, out),
                    None if schema["additionalProperties"] != false => {}
                    None => out.push(path),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                undeclared(item, &schema["items"], at, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_json_schema_declares_every_field_deputy_sends() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/input.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json");
    let mut full = input();
    full.peer = Some(deputy_policy::input::Peer {
        spiffe_id: "spiffe://example.org/agent/a".into(),
        trust_domain: "example.org".into(),
        attributes: Default::default(),
    });
    full.task
        .get_or_insert_with(|| deputy_policy::input::Task {
            id: "t".into(),
            budget_left: None,
            new: false,
            scope: vec![],
            origin: None,
        })
        .budget_left = Some(3);
    full.request.mcp = deputy_policy::input::mcp_from_body(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
    );
    let value = serde_json::to_value(&full).expect("json");
    let mut missing = Vec::new();
    undeclared(&value, &schema, "input", &mut missing);
    assert!(
        missing.is_empty(),
        "fields missing from the schema: {missing:?}"
    );
    for case in cases() {
        let mut missing = Vec::new();
        undeclared(&case.1, &schema, "input", &mut missing);
        assert!(missing.is_empty(), "{}: {missing:?}", case.0);
    }
}
