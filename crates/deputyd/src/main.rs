//! `deputyd --config FILE`: the per-node Deputy daemon.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = deputyd::Args::parse();
    // Before any thread starts, so that every thread is inside the sandbox. A config that does
    // not load is left to `run`, which says why.
    if !args.check
        && let Ok(config) = deputyd::Config::load(&args.config)
    {
        deputyd::sandbox::enter(&config, &args.config)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(deputyd::run(args))
}
