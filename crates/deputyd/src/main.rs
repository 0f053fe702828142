//! `deputyd --config FILE`: the per-node Deputy daemon.

use anyhow::Context as _;
use clap::Parser;

#[allow(unsafe_code)] // Taking the sockets systemd handed over: see the safety note.
fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = deputyd::Args::parse();
    if !args.check {
        // The listening sockets systemd kept over a restart, taken before any thread starts
        // (taking them unsets LISTEN_FDS, so that no child takes them too).
        // SAFETY: no other thread runs yet.
        unsafe { deputy_listen::adopt_from_systemd() }
            .context("cannot take the listening sockets systemd handed over")?;
    }
    // Before any thread starts, so that every thread is inside the sandbox. A config that does
    // not load is left to `run`, which says why.
    let loaded = if args.check {
        None
    } else {
        deputyd::Config::load(&args.config).ok()
    };
    if let Some(config) = &loaded {
        deputyd::sandbox::enter(config, &args.config)?;
    }
    // After the sandbox, so that the allocator's thread is inside it too.
    if let Err(e) = deputyd::memory::start_background_purge() {
        eprintln!(
            "deputyd: the allocator's background thread did not start ({e}); freed memory is \
             returned only as deputyd allocates"
        );
    }
    let stopped = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(deputyd::run_with(args, loaded))?;
    Ok(stopped.exit_code())
}
