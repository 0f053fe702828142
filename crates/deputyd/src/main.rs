//! `deputyd --config FILE`: the per-node Deputy daemon.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    deputyd::run(deputyd::Args::parse()).await
}
