//! `deputy svid fetch` and `deputy svid inspect`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use deputy_identity::inspect::{certificates_from_bytes, inspect_chain};
use deputy_issuer::authority::to_pem;
use time::OffsetDateTime;

use crate::endpoint;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SvidCommand {
    /// Fetch this process's X.509-SVIDs from the Workload API (like `spire-agent api fetch x509`).
    Fetch {
        /// Workload API socket (path or unix:// URI).
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = endpoint::DEFAULT)]
        socket: String,
        /// Write svid.pem, svid.key (0600) and bundle.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Show a certificate's SPIFFE ID, validity and usages, and every reason it would be
    /// refused as an X.509-SVID. Exits 1 when it would be refused.
    Inspect {
        /// PEM or DER certificate (chain), leaf first.
        file: PathBuf,
    },
}

pub(crate) async fn run(command: SvidCommand) -> anyhow::Result<ExitCode> {
    match command {
        SvidCommand::Fetch { socket, write } => fetch(&socket, write.as_deref()).await,
        SvidCommand::Inspect { file } => inspect(&file),
    }
}

async fn fetch(socket: &str, write: Option<&Path>) -> anyhow::Result<ExitCode> {
    let client = endpoint::connect(socket).await?;
    let started = Instant::now();
    let context = client
        .fetch_x509_context()
        .await
        .map_err(endpoint::explain)?;
    let elapsed = started.elapsed();
    let svids = context.svids();
    println!(
        "Received {} svid after {:.3}ms\n",
        svids.len(),
        elapsed.as_secs_f64() * 1e3
    );
    let now = OffsetDateTime::now_utc();
    for svid in svids {
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let report = inspect_chain(&chain, now)?;
        println!("SPIFFE ID:         {}", svid.spiffe_id());
        println!("Serial:            {}", report.serial);
        println!("SVID Valid After:  {}", rfc3339(report.not_before));
        println!("SVID Valid Until:  {}", rfc3339(report.not_after));
        for (i, der) in chain.iter().enumerate() {
            let cert = inspect_chain(std::slice::from_ref(der), now)?;
            println!("Chain #{}:          serial {}", i + 1, cert.serial);
        }
        println!();
    }
    for (trust_domain, bundle) in context.bundle_set().iter() {
        for (i, ca) in bundle.authorities().iter().enumerate() {
            let ca = inspect_chain(&[ca.as_bytes().to_vec()], now)?;
            println!(
                "CA #{} ({trust_domain}) Valid Until: {}",
                i + 1,
                rfc3339(ca.not_after)
            );
        }
    }

    if let Some(dir) = write {
        let svid = svids.first().context("the Workload API returned no SVID")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let chain_pem: String = svid
            .cert_chain()
            .iter()
            .map(|c| to_pem("CERTIFICATE", c.as_bytes()))
            .collect();
        write_file(&dir.join("svid.pem"), chain_pem.as_bytes(), 0o644)?;
        write_file(
            &dir.join("svid.key"),
            to_pem("PRIVATE KEY", svid.private_key().as_bytes()).as_bytes(),
            0o600,
        )?;
        let bundle_pem: String = context
            .bundle_set()
            .iter()
            .flat_map(|(_, b)| {
                b.authorities()
                    .iter()
                    .map(|c| to_pem("CERTIFICATE", c.as_bytes()))
                    .collect::<Vec<_>>()
            })
            .collect();
        write_file(&dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        println!(
            "Wrote svid.pem, svid.key (0600) and bundle.pem to {}",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a file with `mode`, replacing an existing one (whose mode is reset too).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let chain = certificates_from_bytes(&bytes).with_context(|| file.display().to_string())?;
    let report = inspect_chain(&chain, OffsetDateTime::now_utc())?;
    print!("{}", report.render());
    Ok(if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
