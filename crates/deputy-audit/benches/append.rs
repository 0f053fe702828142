//! Records appended per second to a trail on this machine's disk (the temporary directory's):
//! a call record as the data path writes it, with the group commit's fsync running beside.
//!
//! Run: `cargo bench -p deputy-audit --bench append` (set `TMPDIR` to the disk to measure).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deputy_audit::{Checkpoints, OnFailure, Trail};
use record::call;

mod record;

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
