//! deputyd's allocator, and what it says about the memory deputyd holds. (The `deputy`
//! command links this crate, so `deputy issuer` runs on it too.)
//!
//! jemalloc, not glibc's malloc: under the soak's load glibc kept what was freed in its
//! per-thread arenas (up to eight per core), so a node's memory grew for as long as it ran
//! while its live heap stayed flat (four arenas holding 31 MiB for 21 MiB live, still rising
//! after 30 minutes; BENCHMARKS.md). jemalloc hands freed pages back within seconds, and counts
//! what is live, which `/metrics` reports so that an operator can tell a leak (allocated
//! rising) from an allocator holding on to pages (resident rising alone).

use tikv_jemalloc_ctl::{epoch, stats};

/// Bytes the program holds allocated.
pub const ALLOCATED: &str = "deputy_memory_allocated_bytes";
/// Bytes of the allocator's pages in memory: what is allocated, its free pages not yet
/// returned, and its own bookkeeping.
pub const RESIDENT: &str = "deputy_memory_resident_bytes";

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background thread, which returns pages freed ten seconds ago (its default
/// decay) also while the node is idle, when no allocation would run the purge. Called after the
/// sandbox is entered: a thread started before it would run outside it (which is why it is not
/// one of jemalloc's options, read at its first allocation). One thread: jemalloc counts the
/// host's processors, not the ones deputyd may use.
pub fn start_background_purge() -> tikv_jemalloc_ctl::Result<()> {
    tikv_jemalloc_ctl::max_background_threads::write(1)?;
    tikv_jemalloc_ctl::background_thread::write(true)
}

/// Describes the gauges.
pub fn describe() {
    metrics::describe_gauge!(ALLOCATED, "Bytes deputyd holds allocated");
    metrics::describe_gauge!(
        RESIDENT,
        "Bytes of the allocator's pages in memory (allocated, free not yet returned, bookkeeping)"
    );
}

/// Sets the gauges from jemalloc's statistics, refreshed first (they are cached until then):
/// when `/metrics` is read, so that it says what is held at that moment.
pub fn record() {
    let read = || -> tikv_jemalloc_ctl::Result<(usize, usize)> {
        epoch::advance()?;
        Ok((stats::allocated::read()?, stats::resident::read()?))
    };
    match read() {
        Ok((allocated, resident)) => {
            metrics::gauge!(ALLOCATED).set(allocated as f64);
            metrics::gauge!(RESIDENT).set(resident as f64);
        }
        // Not on a call's path, and nothing to act on: the gauges keep their last values.
        Err(e) => tracing::debug!("cannot read the allocator's statistics: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_purge_starts_one_thread() {
        start_background_purge().expect("started");
        assert!(tikv_jemalloc_ctl::background_thread::read().expect("read"));
        assert_eq!(
            tikv_jemalloc_ctl::max_background_threads::read().expect("read"),
            1
        );
    }

    #[test]
    fn allocated_counts_what_is_held_and_not_what_was_freed() {
        let read = || {
            epoch::advance().expect("epoch");
            stats::allocated::read().expect("stats.allocated")
        };
        let before = read();
        let held = std::hint::black_box(vec![1_u8; 64 << 20]);
        let holding = read();
        drop(held);
        let after = read();
        // Other tests allocate at the same time, but not 64 MiB at once.
        assert!(holding >= before + (60 << 20), "{before} -> {holding}");
        assert!(after + (60 << 20) <= holding, "{holding} -> {after}");
    }
}
