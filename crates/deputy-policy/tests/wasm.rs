//! The wasm engine, with modules that speak OPA's wasm ABI (`deputy_tests::opa_abi`): data and
//! input reach the module, the result set is read, and every kind of bad bundle is refused
//! at load with what is wrong. (The shipped policy compiled by `opa build` is compared with the
//! other engines by policies/conformance when an `opa` CLI is on PATH.)

use std::path::Path;
use std::time::{Duration, Instant};

use deputy_tests::opa_abi::{Answer, DECISION_ONLY, bundle, module};

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

#[test]
fn a_bundle_decides_with_its_own_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = module("{}", DECISION_ONLY, Answer::Data);
    let data = br#"{"allow": true, "reasons": ["the bundle's data.json decided"]}"#;
    let path = bundle(
        dir.path(),
        "bundle.tar.gz",
        &[
            ("/policy.wasm", &wasm),
            ("/data.json", data),
            ("/.manifest", b"{}"),
        ],
    );
    let policy = Policy::load(PolicySource::WasmBundle(path)).expect("loads");
    let record = policy.decide(&input());
    assert!(record.decision.allow, "{:?}", record.decision);
    assert_eq!(record.decision.reasons, ["the bundle's data.json decided"]);
    assert_eq!(record.engine, "wasm");
    assert!(
        record.revision.starts_with("sha256:"),
        "{}",
        record.revision
    );

    // Data documents below the root land at their path, as OPA places them.
    let nested = bundle(
        dir.path(),
        "nested.tar.gz",
        &[
            ("/policy.wasm", &wasm),
            ("/data.json", br#"{"allow": false}"#),
            ("/reasons/data.json", br#"{"why": "nested"}"#),
        ],
    );
    let value = WasmPolicy::load(&nested)
        .expect("loads")
        .evaluate(&serde_json::json!({}))
        .expect("evaluates");
    assert_eq!(
        value,
        Some(serde_json::json!({"allow": false, "reasons": {"why": "nested"}}))
    );
}

#[test]
fn the_input_reaches_the_module_and_instances_are_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = module("{}", DECISION_ONLY, Answer::Input);
    let path = bundle(dir.path(), "b.tar.gz", &[("/policy.wasm", &wasm)]);
    let policy = WasmPolicy::load(&path).expect("loads");
    for n in 0..50 {
        let input = serde_json::json!({"n": n, "padding": "x".repeat(n * 1000)});
        let value = policy.evaluate(&input).expect("evaluates");
        assert_eq!(value.as_ref(), Some(&input));
    }
}

#[test]
fn builtins_the_engine_lacks_are_refused_at_load_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // glob.match is one opa-wasm links as a stub that fails only when called.
    for (builtins, missing) in [
        (r#"{"sprintf":0,"glob.match":1}"#, "glob.match"),
        (r#"{"io.jwt.decode_verify":0}"#, "io.jwt.decode_verify"),
        (r#"{"no.such.builtin":0}"#, "no.such.builtin"),
        // It would hand the policy deputyd's environment variables.
        (r#"{"opa.runtime":0}"#, "opa.runtime"),
    ] {
        let wasm = module(builtins, DECISION_ONLY, Answer::Data);
        let path = bundle(dir.path(), "b.tar.gz", &[("/policy.wasm", &wasm)]);
        let error = load_error(&path);
        let needs = error.split("provide: ").nth(1).expect("names them");
        assert!(needs.starts_with(missing), "{error}");
        assert!(!needs.split(';').next().expect("list").contains("sprintf"));
    }
    let wasm = module(
        r#"{"sprintf":0,"time.now_ns":1}"#,
        DECISION_ONLY,
        Answer::Data,
    );
    let path = bundle(dir.path(), "ok.tar.gz", &[("/policy.wasm", &wasm)]);
    let policy = WasmPolicy::load(&path).expect("supported builtins load");
    assert_eq!(policy.builtins(), ["sprintf", "time.now_ns"]);
}

#[test]
fn bad_bundles_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_wasm = bundle(
        dir.path(),
        "rego-only.tar.gz",
        &[
            ("/data.json", b"{}"),
            ("/authz.rego", b"package deputy.authz"),
        ],
    );
    assert!(load_error(&no_wasm).contains("holds no policy.wasm"));

    let corrupt = dir.path().join("corrupt.tar.gz");
    std::fs::write(&corrupt, b"this is not a bundle").expect("write");
    assert!(
        load_error(&corrupt).contains("not a gzip-compressed tar archive")
            || load_error(&corrupt).contains("damaged")
    );

    let not_wasm = bundle(
        dir.path(),
        "w.tar.gz",
        &[("/policy.wasm", b"\0asm garbage")],
    );
    assert!(load_error(&not_wasm).contains("not a valid wasm module"));

    let wasm = module("{}", r#"{"other/rule":0}"#, Answer::Data);
    let wrong = bundle(dir.path(), "e.tar.gz", &[("/policy.wasm", &wasm)]);
    let error = load_error(&wrong);
    assert!(
        error.contains("other/rule") && error.contains("-e deputy/authz/decision"),
        "{error}"
    );

    let wasm = module("{}", DECISION_ONLY, Answer::Data);
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

    let missing = dir.path().join("absent.tar.gz");
    assert!(matches!(
        WasmPolicy::load(&missing),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn a_module_that_never_returns_is_interrupted_and_denies() {
    deputy_policy::set_time_limit(Duration::from_millis(200));
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = module("{}", DECISION_ONLY, Answer::Never);
    let path = bundle(dir.path(), "b.tar.gz", &[("/policy.wasm", &wasm)]);
    let policy = Policy::load(PolicySource::WasmBundle(path)).expect("loads");
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
    let engine = WasmPolicy::load(&dir.path().join("b.tar.gz")).expect("loads");
    assert!(matches!(
        engine.evaluate(&serde_json::json!({})),
        Err(EvalError::TimedOut(_))
    ));
}

#[test]
fn a_broken_bundle_never_replaces_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = module("{}", DECISION_ONLY, Answer::Data);
    let path = bundle(
        dir.path(),
        "bundle.tar.gz",
        &[
            ("/policy.wasm", &wasm),
            ("/data.json", br#"{"allow": true}"#),
        ],
    );
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
