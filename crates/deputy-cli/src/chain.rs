//! `deputy chain inspect`: decode every link of a delegation chain, verify it, and name the
//! first rule that fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use deputy_delegation::{ChainVerifier, LinkClaims, VerifyOptions, link_hash};
use deputy_identity::TrustAnchors;
use spiffe::{TrustDomain, X509Bundle, X509BundleSet};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ChainCommand {
    /// Show each hop of a chain and verify it.
    Inspect {
        /// The Deputy-Delegation header value, or a file holding it.
        chain: String,
        /// PEM CA certificates of the trust domains to trust (each CA names its trust domain in
        /// a `spiffe://` URI SAN, or give --trust-domain).
        #[arg(long)]
        bundle: PathBuf,
        /// Trust domain of CA certificates that do not name one.
        #[arg(long)]
        trust_domain: Option<String>,
        /// The mTLS peer the chain came from (default: the last link's issuer).
        #[arg(long)]
        peer: Option<String>,
        /// The agent receiving it (default: the last link's audience).
        #[arg(long)]
        local: Option<String>,
        /// Verify as of this unix time instead of now.
        #[arg(long)]
        at: Option<u64>,
    },
}

pub(crate) async fn run(command: ChainCommand) -> anyhow::Result<ExitCode> {
    let ChainCommand::Inspect {
        chain,
        bundle,
        trust_domain,
        peer,
        local,
        at,
    } = command;
    let header = match std::fs::read_to_string(&chain) {
        Ok(text) => text,
        Err(_) => chain,
    };
    let header = header
        .trim()
        .trim_start_matches("Deputy-Delegation:")
        .trim()
        .to_owned();
    let links: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut decoded: Vec<LinkClaims> = Vec::new();
    for (i, link) in links.iter().enumerate() {
        // Decoded for display only; the verifier below checks everything.
        let claims: LinkClaims = deputy_delegation::unverified_claims(link)
            .with_context(|| format!("link {i} is not a compact JWS with link claims"))?;
        let prev_ok = match (i, &claims.prev) {
            (0, None) => "first link".to_owned(),
            (0, Some(_)) => "prev set on the first link (wrong)".to_owned(),
            (_, Some(p)) if *p == link_hash(links[i - 1]) => "prev matches link before".to_owned(),
            (_, _) => "prev does NOT match the link before".to_owned(),
        };
        println!("link {i}: {} -> {}", claims.iss, claims.aud);
        println!("  principal {}  task {}", claims.sub, claims.task);
        println!(
            "  scope [{}]  budget {}",
            claims.scope.join(", "),
            claims
                .budget
                .map(|b| format!("{} calls", b.calls))
                .unwrap_or_else(|| "unlimited".into())
        );
        println!(
            "  issued {}  expires {}  jti {}  ({prev_ok})",
            rfc3339(claims.iat),
            rfc3339(claims.exp),
            claims.jti
        );
        decoded.push(claims);
    }
    let last = decoded.last().context("the chain has no link")?;
    let peer = peer.unwrap_or_else(|| last.iss.clone());
    let local = local.unwrap_or_else(|| last.aud.clone());
    let anchors = Arc::new(anchors(&bundle, trust_domain.as_deref())?);
    let now = at.map_or_else(SystemTime::now, |t| UNIX_EPOCH + Duration::from_secs(t));
    let verifier = ChainVerifier::new(VerifyOptions::default());
    match verifier.verify(
        &header,
        &anchors,
        &peer.parse().context("--peer")?,
        &local.parse().context("--local")?,
        now,
    ) {
        Ok(chain) => {
            println!(
                "\nverified: {} link(s), as {local} receiving from {peer}",
                chain.links.len()
            );
            println!("  actors: {}", chain.actors().join(" -> "));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("\nrefused [{}]: {e}", e.code());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(crate) fn anchors(path: &PathBuf, fallback: Option<&str>) -> anyhow::Result<TrustAnchors> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut set = X509BundleSet::new();
    let mut by_domain: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem).filter_map(Result::ok) {
        if block.label != "CERTIFICATE" {
            continue;
        }
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
            .with_context(|| format!("{}: a certificate cannot be parsed", path.display()))?;
        let named = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u
                        .strip_prefix("spiffe://")
                        .map(|td| td.trim_end_matches('/').to_owned()),
                    _ => None,
                })
            });
        let Some(td) = named.or_else(|| fallback.map(str::to_owned)) else {
            bail!(
                "a CA in {} names no trust domain: give --trust-domain",
                path.display()
            );
        };
        by_domain
            .entry(td)
            .or_default()
            .extend_from_slice(&block.contents);
    }
    if by_domain.is_empty() {
        bail!("{} holds no PEM CERTIFICATE", path.display());
    }
    for (td, der) in by_domain {
        let td = TrustDomain::new(&td).with_context(|| format!("trust domain {td:?}"))?;
        set.add_bundle(X509Bundle::parse_from_der(td, &der)?);
    }
    Ok(TrustAnchors::from_bundles(&set))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
