//! Records appended per second to a trail on this machine's disk (the temporary directory's):
//! a call record as the data path writes it, with the group commit's fsync running beside.
//!
//! Run: `cargo bench -p deputy-audit --bench append` (set `TMPDIR` to the disk to measure).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deputy_audit::{CallRecord, Checkpoints, Event, OnFailure, Trail};

fn call(n: u64) -> Event {
    Event::Call(CallRecord {
        direction: "outbound".into(),
        agent: "alpha".into(),
        peer: "-".into(),
        service: "beta".into(),
        method: "GET".into(),
        path: "/tickets/4711".into(),
        status: 200,
        request_id: format!("01a242cd-69e3-74b7-b4ea-{n:012}"),
        decision_id: Some("01a242cd-69e3-74b7-b4ea-74fa261f230c".into()),
        problem: None,
        task: Some("t-4711".into()),
        principal: Some("user:alice@example.org".into()),
        originator: Some("spiffe://example.org/agent/alpha".into()),
        actors: vec![
            "spiffe://example.org/agent/alpha".into(),
            "spiffe://example.org/agent/beta".into(),
        ],
        dry_run: false,
        replayed: false,
        approval: None,
    })
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("one thread", |b| {
        b.iter(|| {
            n += 1;
            trail.append(black_box(call(n))).expect("append");
        });
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
