//! Test helpers: an issuer on real unix sockets in a temporary directory.

use std::path::PathBuf;

use spiffe::TrustDomain;

use crate::server::{IssuerConfig, RunningIssuer};

/// The trust domain test issuers sign for.
pub const TRUST_DOMAIN: &str = "example.org";

/// An issuer serving from a temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TestIssuer {
    /// The running issuer.
    pub running: RunningIssuer,
    /// The directory holding sockets, entries and the CA.
    pub dir: tempfile::TempDir,
}

impl TestIssuer {
    /// Starts an issuer for `example.org` with `entries` (TOML) and a persistent CA.
    pub async fn start(entries: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("entries.toml"), entries).expect("write entries");
        let running = RunningIssuer::start(Self::config_in(dir.path()))
            .await
            .expect("issuer starts");
        Self { running, dir }
    }

    /// The issuer configuration for a directory laid out like [`TestIssuer::start`]'s.
    pub fn config_in(dir: &std::path::Path) -> IssuerConfig {
        IssuerConfig {
            trust_domain: TrustDomain::new(TRUST_DOMAIN).expect("valid trust domain"),
            data_dir: Some(dir.join("ca")),
            workload_socket: dir.join("workload.sock"),
            admin_socket: dir.join("admin.sock"),
            entries: dir.join("entries.toml"),
        }
    }

    /// The Workload API endpoint, as a SPIFFE endpoint URI.
    pub fn workload_endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("workload.sock").display())
    }

    /// The Delegated Identity API endpoint, as a SPIFFE endpoint URI.
    pub fn admin_endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("admin.sock").display())
    }

    /// The entries file, to rewrite before [`RunningIssuer::reload`].
    pub fn entries_path(&self) -> PathBuf {
        self.dir.path().join("entries.toml")
    }
}

/// The effective uid of this process, for entries that must match it.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}
