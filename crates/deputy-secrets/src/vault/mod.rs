//! Vault's HTTP API, as deputyd uses it: log in as an agent, keep its token alive, issue and
//! renew its credentials, and revoke them.
//!
//! vaultrs does the JWT login, token renewal and revocation; `endpoints.rs` adds what it lacks
//! (a database credential *with* its lease, `sys/leases/*`). Errors are classified for the lease
//! manager ([`VaultError::is_unreachable`] keeps credentials, a refusal is shown with Vault's
//! reason) and never carry a value: responses are parsed into [`SecretString`]s before anything
//! can format them.

mod endpoints;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::secret::SecretString;
use crate::spec::Source;

/// Where Vault is and how deputyd logs in to it.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `https://vault.example.org:8200` (or `http://` on loopback).
    pub address: String,
    /// PEM CA certificates Vault's TLS certificate may chain to, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// The JWT auth method's mount (`jwt`).
    pub jwt_mount: String,
    /// The `aud` of the JWT-SVIDs deputyd logs in with; the roles' `bound_audiences`.
    pub audience: String,
    /// How long one request to Vault may take.
    pub timeout: Duration,
}

/// Why a request to Vault failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// No answer: Vault is down, unreachable or too slow.
    #[error("Vault at {address} did not answer {what}: {reason}")]
    Unreachable {
        /// Vault's address.
        address: String,
        /// What was asked.
        what: String,
        /// The transport's reason.
        reason: String,
    },
    /// Vault answered with an error.
    #[error("Vault refused {what} (HTTP {status}): {reason}")]
    Refused {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Vault's `errors`, joined.
        reason: String,
    },
    /// Vault answered something its API does not describe.
    #[error("Vault's answer to {what} could not be read: {reason}")]
    Malformed {
        /// What was asked.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl VaultError {
    /// Vault could not be reached: what is held stays in use until it expires.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// The token was refused (revoked, expired): log in again.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Refused { status: 403, .. })
    }

    /// The lease is gone (revoked, expired, unknown): issue a new credential.
    pub fn is_lease_gone(&self) -> bool {
        matches!(self, Self::Refused { status: 400, reason, .. }
            if reason.contains("lease not found") || reason.contains("invalid lease"))
    }
}

/// A Vault token's terms.
#[derive(Debug, Clone)]
pub struct TokenTerms {
    /// The token.
    pub token: SecretString,
    /// How long it lives from now (0: no expiry).
    pub ttl: Duration,
    /// Whether `renew-self` may extend it.
    pub renewable: bool,
}

/// A credential as issued: its fields and its lease.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The fields (`username`, `password`; a KV secret's keys).
    pub fields: BTreeMap<String, SecretString>,
    /// The lease id (empty for KV).
    pub lease_id: String,
    /// How long it lives from now (0 for KV: no lease).
    pub ttl: Duration,
    /// Whether the lease may be renewed.
    pub renewable: bool,
}

/// Talks to one Vault.
#[derive(Debug, Clone)]
pub struct Vault {
    settings: VaultSettings,
}

/// An agent's logged-in session: requests carry its token.
pub struct Session {
    client: VaultClient,
    address: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // VaultClient's Debug prints its settings, the token among them.
        f.debug_struct("Session")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A Vault client for `settings`; checks that a client can be built (the CA file reads).
    pub fn new(settings: VaultSettings) -> Result<Self, VaultError> {
        let vault = Self { settings };
        vault.client("")?;
        Ok(vault)
    }

    /// The settings.
    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    fn client(&self, token: &str) -> Result<VaultClient, VaultError> {
        let mut builder = VaultClientSettingsBuilder::default();
        // Every setting explicit: vaultrs would otherwise read VAULT_SKIP_VERIFY,
        // VAULT_NAMESPACE, VAULT_CACERT and a client certificate from the environment.
        builder
            .address(&self.settings.address)
            .token(token)
            .verify(true)
            .namespace(None)
            .identity(None)
            .timeout(Some(self.settings.timeout))
            .ca_certs(
                self.settings
                    .ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            );
        let settings = builder.build().map_err(|e| VaultError::Malformed {
            what: "the client settings".into(),
            reason: format!("{e}; check [vault] address"),
        })?;
        VaultClient::new(settings).map_err(|e| self.error("building a client", e))
    }

    /// Logs in with a JWT-SVID under `role` of the JWT auth method.
    pub async fn login_jwt(
        &self,
        role: &str,
        jwt: &SecretString,
    ) -> Result<(TokenTerms, Session), VaultError> {
        let what = format!("the JWT login as role {role:?}");
        let anonymous = self.client("")?;
        let auth = vaultrs::auth::oidc::login(
            &anonymous,
            &self.settings.jwt_mount,
            jwt.expose(),
            Some(role.to_owned()),
        )
        .await
        .map_err(|e| self.error(&what, e))?;
        let token = SecretString::new(auth.client_token);
        let session = Session {
            client: self.client(token.expose())?,
            address: self.settings.address.clone(),
        };
        Ok((
            TokenTerms {
                token,
                ttl: clamp_ttl(auth.lease_duration),
                renewable: auth.renewable,
            },
            session,
        ))
    }

    fn error(&self, what: &str, e: ClientError) -> VaultError {
        classify(&self.settings.address, what, e)
    }
}

impl Session {
    /// Extends the token by `increment` (Vault caps it at the role's max TTL).
    pub async fn renew_token(&self, increment: Duration) -> Result<Duration, VaultError> {
        let increment = format!("{}s", increment.as_secs());
        let auth = vaultrs::token::renew_self(&self.client, Some(&increment))
            .await
            .map_err(|e| classify(&self.address, "renewing the token", e))?;
        Ok(clamp_ttl(auth.lease_duration))
    }

    /// Revokes the token and, with it, every lease it created.
    pub async fn revoke_token(&self) -> Result<(), VaultError> {
        vaultrs::token::revoke_self(&self.client)
            .await
            .map_err(|e| classify(&self.address, "revoking the token", e))
    }

    /// Issues (or, for KV, reads) the credential `source` names.
    pub async fn issue(&self, source: &Source) -> Result<Issued, VaultError> {
        endpoints::issue(&self.client, &self.address, source).await
    }

    /// Extends a lease by `increment`; returns its new TTL (capped at the role's max TTL).
    pub async fn renew_lease(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Duration, VaultError> {
        endpoints::renew_lease(&self.client, &self.address, lease_id, increment).await
    }
}

/// The longest TTL taken from Vault (a year): a larger one is read as this, so that no time
/// arithmetic on it can overflow.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A TTL in seconds as Vault sends it, bounded by [`MAX_TTL`].
pub(crate) fn clamp_ttl(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(MAX_TTL)
}

/// A vaultrs error as a [`VaultError`], without ever formatting a response body.
fn classify(address: &str, what: &str, e: ClientError) -> VaultError {
    use rustify::errors::ClientError as Rest;
    let what = what.to_owned();
    match e {
        ClientError::APIError { code, errors } => VaultError::Refused {
            what,
            status: code,
            reason: if errors.is_empty() {
                "no reason given".into()
            } else {
                errors.join("; ")
            },
        },
        ClientError::RestClientError { source } => match source {
            Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                VaultError::Unreachable {
                    address: address.to_owned(),
                    what,
                    reason: format!("{source:#}"),
                }
            }
            Rest::ServerResponseError { code, .. } => VaultError::Refused {
                what,
                status: code,
                reason: "an answer that is not Vault's error document".into(),
            },
            other => VaultError::Malformed {
                what,
                reason: other.to_string(),
            },
        },
        other => VaultError::Malformed {
            what,
            reason: other.to_string(),
        },
    }
}
