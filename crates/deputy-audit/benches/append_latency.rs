//! What the trail adds to a call: the time of each `append` (the data path makes one at each
//! node before the answer leaves, so a call through two nodes waits for two) and the CPU per
//! record, the group commit's `fdatasync` thread included, at fixed rates from two threads (a
//! 2-core node's workers), with the temporary directory's disk under it.
//!
//! Run: `cargo bench -p deputy-audit --bench append_latency` (set `TMPDIR` to the disk to
//! measure; `-- SECONDS` for longer runs, 10 by default).

use std::time::{Duration, Instant};

use deputy_audit::{Checkpoints, OnFailure, Trail};
use record::call;

mod record;

/// This process's CPU time so far (all its threads: the writers and the syncing one).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Appends at `rate` records a second in all, from `threads` threads, for `seconds` (or, with
/// `append` false, keeps the same schedule and makes the same events without appending them:
/// the pacing's own CPU, to subtract); returns each append's duration and the CPU per record.
fn run(rate: u64, threads: u64, seconds: u64, append: bool) -> (Vec<Duration>, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
    let every = Duration::from_nanos(1_000_000_000 * threads / rate);
    let records = rate * seconds / threads;
    let cpu = process_cpu();
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..threads)
            .map(|t| {
                let trail = &trail;
                scope.spawn(move || {
                    // Each thread on its own schedule, offset from the others'.
                    let start = Instant::now() + every * u32::try_from(t).expect("threads") / 2;
                    let mut times = Vec::with_capacity(usize::try_from(records).expect("fits"));
                    for i in 0..records {
                        let due = start + every * u32::try_from(i).expect("fits");
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let event = call(t * records + i);
                        let began = Instant::now();
                        if append {
                            trail.append(event).expect("append");
                        } else {
                            drop(std::hint::black_box(event));
                        }
                        times.push(began.elapsed());
                    }
                    times
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect()
    });
    let cpu = process_cpu() - cpu;
    let per_record = cpu / u32::try_from(rate * seconds).expect("fits");
    (times, per_record)
}

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    println!(
        "| records/s (2 threads) | append p50 | p99 | p99.9 | max | CPU per record (fsync \
         thread included, pacing subtracted) |"
    );
    println!("|---|---|---|---|---|---|");
    for rate in [1_000, 15_000] {
        let (_, pacing) = run(rate, 2, seconds, false);
        let (mut times, cpu) = run(rate, 2, seconds, true);
        let cpu = cpu.saturating_sub(pacing);
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "| {rate} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            at(0.999).as_secs_f64() * 1e6,
            times.last().expect("records").as_secs_f64() * 1e6,
            cpu.as_secs_f64() * 1e6
        );
    }
}
