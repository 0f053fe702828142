//! The wasm engine on policies compiled by the real `opa build -t wasm` (OPA v1.22.3 from
//! `scripts/peers`): data and input reach the module, builtins behave as in OPA, and every kind
//! of bad bundle is refused at load with what is wrong. Only a module that never returns and one
//! of an older ABI are hand-written (`deputy_tests::opa_abi`): no Rego compiles to either. The
//! shipped policy is compared with OPA on 1,223 inputs by policies/conformance.

use std::path::Path;
use std::time::{Duration, Instant};

use deputy_tests::opa::{build_wasm, capabilities_with, shipped_bundle, sources, wasm_of};
use deputy_tests::opa_abi::{Answer, bundle, module};
use serde_json::json;

use deputy_policy::{Engine as _, EvalError, LoadError, Policy, PolicySource, WasmPolicy};

fn load_error(path: &Path) -> String {
    match WasmPolicy::load(path) {
        Ok(policy) => panic!("{} loaded: {policy:?}", path.display()),
        Err(e) => e.to_string(),
    }
}

fn input() -> deputy_policy::PolicyInput {
    let case = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cases/mcp-allowed-tool.json"),
    )
    .expect("case");
    let case: serde_json::Value = serde_json::from_str(&case).expect("json");
    serde_json::from_value(case["input"].clone()).expect("input")
}

/// `rego` compiled as `package deputy.authz` with `data` files.
fn compiled(
    dir: &Path,
    name: &str,
    rego: &str,
    data: &[(&str, serde_json::Value)],
) -> std::path::PathBuf {
    let text = format!("package deputy.authz\n\n{rego}\n");
    let src = sources(dir, &format!("{name}-src"), &[("policy.rego", &text)], data);
    build_wasm(dir, &format!("{name}.tar.gz"), &[&src], &[])
}

#[test]
fn a_bundle_decides_with_its_own_data_at_its_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = compiled(
        dir.path(),
        "data",
        "decision := {\"allow\": data.answer.allow, \"reasons\": [data.reasons.why]}",
        &[
            ("data.json", json!({"answer": {"allow": true}})),
            (
                "reasons/data.json",
                json!({"why": "the bundle's data decided"}),
            ),
        ],
    );
    let policy = Policy::load(PolicySource::WasmBundle(path)).expect("loads");
    let record = policy.decide(&input());
    assert!(record.decision.allow, "{:?}", record.decision);
    assert_eq!(record.decision.reasons, ["the bundle's data decided"]);
    assert_eq!(record.engine, "wasm");
    assert!(
        record.revision.starts_with("sha256:"),
        "{}",
        record.revision
    );
}

#[test]
fn the_shipped_policy_compiled_by_opa_decides_its_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = WasmPolicy::load(&shipped_bundle(dir.path(), "b.tar.gz"))
        .expect("the shipped policy loads as wasm");
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cases");
    let mut decided = 0;
    for entry in std::fs::read_dir(cases).expect("cases") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        let case: serde_json::Value = serde_json::from_str(&text).expect("json");
        let decision = policy
            .evaluate(&case["input"])
            .expect("evaluates")
            .expect("defined");
        // Every field the case records (allow, reasons, approval, scope) as the policy gave it.
        for (field, expected) in case["expect"].as_object().expect("expect") {
            assert_eq!(
                &decision[field], expected,
                "{}: {field} in {decision}",
                case["name"]
            );
        }
        decided += 1;
    }
    assert!(decided >= 10, "{decided} cases");
}

#[test]
fn the_input_reaches_the_module_and_instances_are_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = compiled(dir.path(), "input", "decision := input", &[]);
    let policy = WasmPolicy::load(&path).expect("loads");
    // Up to 4 MB: past the module's first pages, so the memory grows for the input.
    for n in 0..50 {
        let input = json!({"n": n, "padding": "x".repeat(n * n * 1700)});
        let value = policy.evaluate(&input).expect("evaluates");
        assert_eq!(value.as_ref(), Some(&input));
    }
    let counts = policy.instance_counts();
    assert_eq!(counts.made, 1, "one instance served all 50: {counts:?}");
    assert_eq!(counts.live, 1, "{counts:?}");
}

/// A data document of about 16 MiB: 160,000 entries of 100 bytes.
fn large_data() -> serde_json::Value {
    let entries: serde_json::Map<String, serde_json::Value> = (0..160_000)
        .map(|i| (format!("customer-{i:06}"), json!("x".repeat(80))))
        .collect();
    json!({"customers": entries})
}

#[test]
fn a_policy_with_a_16_mib_data_document_is_served_from_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rego = "decision := {\"allow\": data.customers[input.customer] != \"\"}";
    let path = compiled(dir.path(), "large", rego, &[("data.json", large_data())]);
    let policy = WasmPolicy::load(&path).expect("loads");
    assert!(
        policy.loaded_memory() > 32 * 1024 * 1024,
        "a fresh instance holds the parsed data: {} bytes",
        policy.loaded_memory()
    );
    for i in 0..20 {
        let customer = format!("customer-{:06}", i * 7_919);
        let value = policy
            .evaluate(&json!({"customer": customer}))
            .expect("evaluates");
        assert_eq!(value, Some(json!({"allow": true})), "{customer}");
    }
    let counts = policy.instance_counts();
    assert_eq!(counts.made, 1, "the data was parsed once: {counts:?}");
}

#[test]
fn live_instances_stay_bounded_under_64_concurrent_decisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = compiled(dir.path(), "busy", "decision := {\"n\": input.n}", &[]);
    let policy = std::sync::Arc::new(WasmPolicy::load(&path).expect("loads"));
    let start = std::sync::Arc::new(std::sync::Barrier::new(64));
    let deciders: Vec<_> = (0..64)
        .map(|n| {
            let (policy, start) = (policy.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for round in 0..5 {
                    let value = policy.evaluate(&json!({"n": n * 10 + round}));
                    assert_eq!(
                        value.expect("decided").expect("defined"),
                        json!({"n": n * 10 + round})
                    );
                }
            })
        })
        .collect();
    for decider in deciders {
        decider.join().expect("decider");
    }
    let counts = policy.instance_counts();
    assert_eq!(counts.max_live, deputy_policy::wasm::max_live_instances());
    assert!(
        counts.peak <= counts.max_live,
        "{} instances existed at once, past the bound: {counts:?}",
        counts.peak
    );
    assert!(counts.made <= counts.max_live as u64, "{counts:?}");
}

#[test]
fn a_cold_decision_that_runs_out_while_loading_data_is_a_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The rule conflicts when input.conflict is set: the module aborts, its instance is not
    // kept, and the next decision has to make a new one (parsing 16 MiB of data again).
    let rego = "decision := 1 if input.conflict\n\ndecision := 2 if input.conflict\n\n\
                decision := count(data.customers) if not input.conflict";
    let path = compiled(dir.path(), "cold", rego, &[("data.json", large_data())]);
    let policy = WasmPolicy::load_with(&path, Duration::from_secs(60)).expect("loads");
    let conflict = json!({"conflict": true});
    let calm = json!({"conflict": false});
    assert!(matches!(
        policy.evaluate(&conflict),
        Err(EvalError::Failed(_))
    ));
    // How long a cold decision takes here, with time to spare.
    let started = Instant::now();
    assert_eq!(policy.evaluate(&calm).expect("cold"), Some(json!(160_000)));
    let cold = started.elapsed();

    assert!(matches!(
        policy.evaluate(&conflict),
        Err(EvalError::Failed(_))
    ));
    let limit = cold / 4;
    policy.set_time_limit(limit);
    let started = Instant::now();
    let outcome = policy.evaluate(&calm);
    let took = started.elapsed();
    assert!(
        matches!(&outcome, Err(EvalError::TimedOut(message)) if message.contains("time limit")),
        "a limit of {limit:?} on a cold decision of {cold:?}: {outcome:?}"
    );
    assert!(
        took < cold,
        "stopped at its limit ({limit:?}), not after loading ({took:?} of {cold:?})"
    );
}

#[test]
fn builtins_answer_as_in_opa() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rego = r#"
scopes := {"read:tickets", "write:tickets"}

decision := {
    "set": sprintf("%v", [scopes]),
    "array": sprintf("%v and %d and %q", [["a", 1], 7, "q"]),
    "same_now": time.now_ns() == time.now_ns(),
    "date": time.date(0),
    "undefined_on_error": object.get({}, "x", "fallback"),
    "bad_duration": [d | d := time.parse_duration_ns("ten minutes")],
}
"#;
    let path = compiled(dir.path(), "builtins", rego, &[]);
    let policy = WasmPolicy::load(&path).expect("loads");
    assert!(
        policy.builtins().iter().any(|b| b == "sprintf"),
        "{:?}",
        policy.builtins()
    );
    let value = policy
        .evaluate(&json!({}))
        .expect("evaluates")
        .expect("defined");
    // What `opa eval` answers for the same rules.
    assert_eq!(value["set"], r#"{"read:tickets", "write:tickets"}"#);
    assert_eq!(value["array"], r#"["a", 1] and 7 and "q""#);
    assert_eq!(value["same_now"], true);
    assert_eq!(value["date"], json!([1970, 1, 1]));
    assert_eq!(value["undefined_on_error"], "fallback");
    // A builtin's error leaves its expression undefined, as OPA without --strict-builtin-errors.
    assert_eq!(value["bad_duration"], json!([]));
}

#[test]
fn builtins_the_engine_lacks_are_refused_at_load_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // It would hand the policy deputyd's environment variables.
    let runtime = compiled(dir.path(), "runtime", "decision := opa.runtime()", &[]);
    let error = load_error(&runtime);
    assert!(error.contains("does not provide: opa.runtime;"), "{error}");

    // A builtin of a custom OPA build, declared through OPA's capabilities.
    let caps = capabilities_with(dir.path(), "no.such.builtin");
    let src = sources(
        dir.path(),
        "custom-src",
        &[(
            "p.rego",
            "package deputy.authz\n\ndecision := no.such.builtin(\"x\")\n",
        )],
        &[],
    );
    let custom = build_wasm(
        dir.path(),
        "custom.tar.gz",
        &[&src],
        &["--capabilities", caps.to_str().expect("utf-8")],
    );
    let error = load_error(&custom);
    assert!(
        error.contains("does not provide: no.such.builtin;"),
        "{error}"
    );
    assert!(error.contains("engine = \"rego\""), "{error}");
}

#[test]
fn a_policy_that_fails_denies_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two values for one complete rule: OPA's conflict error, raised inside the module.
    let rego =
        "decision := {\"allow\": true} if input.a\n\ndecision := {\"allow\": false} if input.b";
    let path = compiled(dir.path(), "conflict", rego, &[]);
    let policy = WasmPolicy::load(&path).expect("loads");
    let error = policy
        .evaluate(&json!({"a": true, "b": true}))
        .expect_err("a conflict is an error");
    assert!(matches!(error, EvalError::Failed(_)), "{error:?}");
    assert!(error.to_string().contains("aborted"), "{error}");
    // The next evaluation gets a sound instance.
    assert_eq!(
        policy.evaluate(&json!({"a": true})).expect("evaluates"),
        Some(json!({"allow": true}))
    );
}

#[test]
fn a_deeply_nested_value_for_a_builtin_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A policy that parses attacker text and formats it: the nesting reaches the host.
    let rego = "decision := {\"allow\": false, \"reasons\": [sprintf(\"%v\", [json.unmarshal(input.meta)])]}";
    let path = compiled(dir.path(), "deep", rego, &[]);
    let policy = WasmPolicy::load(&path).expect("loads");
    let nested =
        |depth: usize| json!({"meta": format!("{}{}", "[".repeat(depth), "]".repeat(depth))});
    // 300 levels parse in the module and reach the host's builtin, which refuses past 128.
    let outcome = policy.evaluate(&nested(300));
    assert!(
        matches!(&outcome, Err(EvalError::Failed(message)) if message.contains("deeper than 128")),
        "{outcome:?}"
    );
    // 5,000 levels exhaust the module's own stack while it parses: a trap, not a crash.
    let outcome = policy.evaluate(&nested(5_000));
    assert!(
        matches!(&outcome, Err(EvalError::Failed(message)) if message.contains("call stack exhausted")),
        "{outcome:?}"
    );
    let shallow = policy
        .evaluate(&json!({"meta": "[[1]]"}))
        .expect("evaluates")
        .expect("defined");
    assert_eq!(shallow["reasons"], json!(["[[1]]"]));
}

#[test]
fn bad_bundles_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `opa build` without -t wasm: Rego only.
    let src = sources(
        dir.path(),
        "rego-src",
        &[(
            "p.rego",
            "package deputy.authz\n\ndecision := 1\n\nother := 2\n",
        )],
        &[],
    );
    let rego_only = dir.path().join("rego-only.tar.gz");
    let built = std::process::Command::new(deputy_tests::peers::peer("opa"))
        .arg("build")
        .arg("-o")
        .arg(&rego_only)
        .arg(&src)
        .status()
        .expect("opa build");
    assert!(built.success());
    assert!(load_error(&rego_only).contains("holds no policy.wasm"));

    let corrupt = dir.path().join("corrupt.tar.gz");
    std::fs::write(&corrupt, b"this is not a bundle").expect("write");
    let error = load_error(&corrupt);
    assert!(
        error.contains("not a gzip-compressed tar archive") || error.contains("damaged"),
        "{error}"
    );

    let not_wasm = bundle(
        dir.path(),
        "w.tar.gz",
        &[("/policy.wasm", b"\0asm garbage")],
    );
    assert!(load_error(&not_wasm).contains("not a valid wasm module"));

    let other = build_wasm(
        dir.path(),
        "e.tar.gz",
        &[&src],
        &["-e", "deputy/authz/other"],
    );
    let error = load_error(&other);
    assert!(
        error.contains("deputy/authz/other") && error.contains("-e deputy/authz/decision"),
        "{error}"
    );

    let wasm = wasm_of(&compiled(
        dir.path(),
        "good",
        "decision := data.answer",
        &[],
    ));
    let bad_data = bundle(
        dir.path(),
        "d.tar.gz",
        &[("/policy.wasm", &wasm), ("/data.json", b"{not json")],
    );
    assert!(load_error(&bad_data).contains("data.json is not JSON"));

    let huge = vec![b' '; 17 * 1024 * 1024];
    let big_data = bundle(
        dir.path(),
        "big.tar.gz",
        &[("/policy.wasm", &wasm), ("/data.json", &huge)],
    );
    assert!(load_error(&big_data).contains("more than the 16777216 allowed"));

    let old = bundle(
        dir.path(),
        "old.tar.gz",
        &[("/policy.wasm", &module(1, Answer::Undefined))],
    );
    let error = load_error(&old);
    assert!(
        error.contains("ABI 1.1") && error.contains("1.2 or later"),
        "{error}"
    );

    let missing = dir.path().join("absent.tar.gz");
    assert!(matches!(
        WasmPolicy::load(&missing),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn a_module_that_never_returns_is_interrupted_and_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = bundle(
        dir.path(),
        "b.tar.gz",
        &[("/policy.wasm", &module(2, Answer::Never))],
    );
    let limit = Duration::from_millis(200);
    let policy = Policy::load_with(PolicySource::WasmBundle(path.clone()), limit).expect("loads");
    let started = Instant::now();
    let record = policy.decide(&input());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!record.decision.allow);
    assert!(
        record.decision.reasons[0].contains("time limit"),
        "{:?}",
        record.decision
    );
    let engine = WasmPolicy::load_with(&path, limit).expect("loads");
    assert!(matches!(
        engine.evaluate(&json!({})),
        Err(EvalError::TimedOut(_))
    ));
}

#[test]
fn a_broken_bundle_never_replaces_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = compiled(dir.path(), "bundle", "decision := {\"allow\": true}", &[]);
    let policy = Policy::load(PolicySource::WasmBundle(path.clone())).expect("loads");
    let revision = policy.revision();
    std::fs::write(&path, b"truncated").expect("write");
    assert!(policy.reload().is_err());
    assert!(policy.last_error().expect("kept").contains("bundle"));
    assert_eq!(policy.revision(), revision);
    assert!(
        policy.decide(&input()).decision.allow,
        "the last good bundle serves"
    );
}
