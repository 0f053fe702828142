//! `deputy issuer`: the embedded SPIFFE issuer as a foreground process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use deputy_issuer::{IssuerConfig, RunningIssuer};
use tokio::signal::unix::{SignalKind, signal};

/// Arguments of `deputy issuer`.
#[derive(Debug, clap::Args)]
pub(crate) struct IssuerArgs {
    /// Trust domain to sign for, such as example.org.
    #[arg(long)]
    trust_domain: String,
    /// Directory that keeps the CA across restarts (keys 0600).
    #[arg(long, required_unless_present = "ephemeral")]
    data_dir: Option<PathBuf>,
    /// Keep the CA in memory only: every start is a new trust root.
    #[arg(long, conflicts_with = "data_dir")]
    ephemeral: bool,
    /// Unix socket for the SPIFFE Workload API.
    #[arg(long)]
    workload_socket: PathBuf,
    /// Unix socket for SPIRE's Delegated Identity API (authorized delegates only).
    #[arg(long)]
    admin_socket: PathBuf,
    /// Registration entries and delegates (TOML); re-read on SIGHUP.
    #[arg(long)]
    entries: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

pub(crate) async fn run(args: IssuerArgs) -> anyhow::Result<ExitCode> {
    let _log = deputyd::init_logging(args.log_json);
    let trust_domain = deputy_identity::spiffe_id::parse_trust_domain(&args.trust_domain)
        .context("--trust-domain")?;
    let config = IssuerConfig {
        trust_domain,
        data_dir: if args.ephemeral { None } else { args.data_dir },
        workload_socket: args.workload_socket,
        admin_socket: args.admin_socket,
        entries: args.entries,
    };
    let issuer = RunningIssuer::start(config).await?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => match issuer.reload() {
                Ok(count) => tracing::info!(entries = count, "entries reloaded"),
                Err(e) => tracing::error!(
                    "entries not reloaded, the previous entries keep serving: {e}"
                ),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("issuer stopping");
    issuer.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
