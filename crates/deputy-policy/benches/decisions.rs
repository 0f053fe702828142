//! Decisions per second, and p50/p99 latency, per engine, with a realistic input (a support
//! agent reading its own team's customer inside a task: the case
//! `policies/cases/support-reads-own-team-customer.json`, which runs every rule of the shipped
//! policy), and the shipped policy's most expensive case: a task starting with a wildcard scope
//! the service's accepted scopes are narrowed from (`tickets-scope-narrowed.json`).
//!
//! - `rego`: the shipped policy, as deputyd serves it (`Policy::decide`: input to JSON, size
//!   check, evaluation, strict reading, decision log event and metrics).
//! - `wasm`: the same shipped policy compiled by `opa build -t wasm` (the OPA `scripts/peers`
//!   builds), decided the same way by the wasm engine.
//!
//! - `wasm, 16 MiB data`: the same compiled policy with a customer directory of 160,000 entries
//!   in its data (16 MiB of JSON): decisions served from pooled instances, which hold the parsed
//!   data; the load (compiling, and parsing the data once) is printed with the memory a fresh
//!   instance holds.
//!
//! Run: `cargo bench -p deputy-policy --bench decisions`

use std::hint::black_box;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use deputy_policy::{Engine as _, Policy, PolicyInput, PolicySource, RegoPolicy};
use deputy_tests::opa::shipped_bundle;

fn input() -> PolicyInput {
    case_input("support-reads-own-team-customer")
}

fn case_input(name: &str) -> PolicyInput {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../policies/cases/{name}.json"));
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("case")).expect("json");
    serde_json::from_value(case["input"].clone()).expect("input")
}

fn policies(dir: &Path) -> Vec<(&'static str, Policy)> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/authz");
    let rego = Policy::load(PolicySource::RegoDir(shipped)).expect("rego");
    let wasm =
        Policy::load(PolicySource::WasmBundle(shipped_bundle(dir, "b.tar.gz"))).expect("wasm");
    let large = Policy::load(PolicySource::WasmBundle(large_data_bundle(dir))).expect("wasm");
    vec![
        ("rego (shipped policy)", rego),
        ("wasm (shipped policy, opa build)", wasm),
        ("wasm, 16 MiB data", large),
    ]
}

/// The shipped policy compiled with 160,000 more customers in its data (about 16 MiB of JSON).
fn large_data_bundle(dir: &Path) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/authz");
    let src = dir.join("large-src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for entry in std::fs::read_dir(&shipped).expect("policy dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            std::fs::copy(&path, src.join(&name)).expect("copy");
        }
    }
    let text = std::fs::read_to_string(shipped.join("data.json")).expect("data");
    let mut data: serde_json::Value = serde_json::from_str(&text).expect("json");
    let customers = data["customers"].as_object_mut().expect("customers");
    for i in 0..160_000 {
        let note = "x".repeat(60);
        customers.insert(
            format!("c-{:07}", 10_000 + i),
            serde_json::json!({"team": if i % 2 == 0 { "eu" } else { "us" }, "note": note}),
        );
    }
    let text = serde_json::to_string(&data).expect("json");
    std::fs::write(src.join("data.json"), &text).expect("write");
    let bundle = deputy_tests::opa::build_wasm(dir, "large.tar.gz", &[&src], &[]);
    let started = Instant::now();
    let engine = deputy_policy::WasmPolicy::load(&bundle).expect("loads");
    println!(
        "wasm, 16 MiB data: {:.1} MiB of data JSON; load {:.0} ms; a fresh instance holds {:.1} MiB",
        text.len() as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64() * 1e3,
        engine.loaded_memory() as f64 / (1 << 20) as f64
    );
    bundle
}

/// What is timed: each entry is one decision.
type Decide = Box<dyn Fn() -> bool>;

/// The full decisions, and the rego engine's evaluation alone (the input's JSON text made
/// beforehand, the result not read, nothing logged): the difference is what `Policy::decide`
/// adds around the engine.
fn cases(dir: &Path) -> Vec<(&'static str, Decide)> {
    let input = input();
    let mut cases: Vec<(&'static str, Decide)> = Vec::new();
    for (name, policy) in policies(dir) {
        let input = input.clone();
        assert!(policy.decide(&input).decision.allow, "{name}");
        cases.push((
            name,
            Box::new(move || policy.decide(black_box(&input)).decision.allow),
        ));
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/authz");
    let policy = Policy::load(PolicySource::RegoDir(shipped.clone())).expect("rego");
    let narrowing = case_input("tickets-scope-narrowed");
    assert!(policy.decide(&narrowing).decision.scope.is_some());
    cases.push((
        "rego (wildcard narrowing)",
        Box::new(move || policy.decide(black_box(&narrowing)).decision.allow),
    ));
    let engine = RegoPolicy::load(&shipped).expect("rego");
    let text = serde_json::value::to_raw_value(&input).expect("json");
    cases.push((
        "rego evaluation only",
        Box::new(move || engine.evaluate_input(black_box(&input), &text).is_ok()),
    ));
    cases
}

fn throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("decide");
    for (name, decide) in cases(dir.path()) {
        group.bench_function(name, |b| b.iter(|| black_box(decide())));
    }
    group.finish();
}

/// p50 and p99 over single decisions (Criterion reports means of batches).
fn latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, decide) in cases(dir.path()) {
        for _ in 0..2_000 {
            black_box(decide());
        }
        let mut times: Vec<Duration> = (0..20_000)
            .map(|_| {
                let started = Instant::now();
                black_box(decide());
                started.elapsed()
            })
            .collect();
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "latency {name:<34} p50 {:>8.1} µs   p99 {:>8.1} µs   ({} decisions)",
            at(0.50).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            times.len()
        );
    }
}

criterion_group!(benches, throughput);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    latency();
}
