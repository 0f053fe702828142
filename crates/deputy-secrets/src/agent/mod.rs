//! One agent's Vault life: log in as the agent, obtain each of its secrets, renew what Vault
//! lets be renewed at about two thirds of its lease, replace what it will not, and revoke it all
//! when the agent is removed or deputyd stops.
//!
//! A lease belongs to the token that created it (Vault revokes it with that token), so a token
//! is kept, and renewed, while any credential issued under it is in use; a login after an SVID
//! rotation or a refused token makes a new current token for what is issued next, and the old one
//! is revoked once nothing uses it. While Vault does not answer, every credential that still
//! works stays in use; one that expires is withdrawn (calls that need it are refused), and
//! replacing it is retried with a backoff of its own.

pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deputy_identity::backoff::Backoff;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::plan::{Step, Terms, retry_at};
use crate::secret::{Credential, SecretString};
use crate::spec::{AgentSecrets, SecretSpec, Source};
use crate::store::CredentialStore;
use crate::vault::{Session, Vault, VaultError};
use status::{AgentSecretsStatus, LoginStatus, SecretStatus, from_now, rfc3339};

/// Fetches an agent's JWT-SVID (deputyd: through the Delegated Identity API).
pub trait JwtSvids: Send + Sync + 'static {
    /// A fresh JWT-SVID of `agent` for `audience`.
    fn fetch<'a>(
        &'a self,
        agent: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, String>>;
}

/// An agent's X.509-SVIDs as the identity manager publishes them.
pub type Svids = watch::Receiver<Option<Arc<deputy_identity::TlsMaterial>>>;

/// What one agent's loop needs.
pub(crate) struct AgentContext {
    pub spec: AgentSecrets,
    pub vault: Vault,
    pub jwt: Arc<dyn JwtSvids>,
    /// The agent's X.509-SVID: when it rotates, log in again.
    pub rotations: Option<Svids>,
    pub store: CredentialStore,
    pub status: Arc<Mutex<AgentSecretsStatus>>,
    pub backoff: (Duration, Duration),
}

struct Token {
    id: u64,
    session: Arc<Session>,
    terms: Terms,
    /// Renewing or re-logging failed: retry then.
    retry: Option<Instant>,
    backoff: Backoff,
}

struct Held {
    lease_id: String,
    token: u64,
    /// `None` for KV (no lease): read again at `refresh`.
    terms: Option<Terms>,
    obtained: Instant,
    credential: Arc<Credential>,
}

struct Secret {
    spec: SecretSpec,
    held: Option<Held>,
    /// An attempt failed: the next one then.
    retry: Option<Instant>,
    /// Issue a new one at once (its token is going away, or its lease is gone).
    replace_now: bool,
    backoff: Backoff,
    generation: u64,
    renewals: u64,
}

/// The next thing to do and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Nothing within the hour: look again then.
    Nothing,
    Login,
    RenewToken(usize),
    Obtain(usize),
    RenewSecret(usize),
    Expire(usize),
}

pub(crate) async fn run(ctx: AgentContext, cancel: CancellationToken) {
    let (min, max) = ctx.backoff;
    // A per-task secret is issued for each task that needs it, not here (`crate::task`).
    let mut secrets: Vec<Secret> = ctx
        .spec
        .secrets
        .iter()
        .filter(|spec| !spec.per_task)
        .map(|spec| Secret {
            spec: spec.clone(),
            held: None,
            retry: None,
            replace_now: false,
            backoff: Backoff::new(min, max),
            generation: 0,
            renewals: 0,
        })
        .collect();
    let mut tokens: Vec<Token> = Vec::new();
    let mut login_at = Some(Instant::now());
    let mut login_backoff = Backoff::new(min, max);
    let mut next_token = 0u64;
    let mut rotations = ctx.rotations.clone();
    let mut had_svid = rotations
        .as_mut()
        .is_some_and(|r| r.borrow_and_update().is_some());
    loop {
        let (at, due) = next_due(&tokens, &secrets, login_at);
        let rotated = async {
            match rotations.as_mut() {
                Some(r) => r
                    .changed()
                    .await
                    .ok()
                    .map(|()| r.borrow_and_update().is_some()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            svid = rotated => {
                match svid {
                    // The first SVID is not a rotation; a later one is.
                    Some(true) if had_svid => {
                        tracing::info!(agent = %ctx.spec.agent,
                            "SVID rotated: logging in to Vault again");
                        login_at.get_or_insert(Instant::now());
                    }
                    Some(present) => had_svid |= present,
                    None => rotations = None,
                }
                continue;
            }
            () = tokio::time::sleep_until(at.into()) => {}
        }
        let now = Instant::now();
        match due {
            Due::Nothing => {}
            Due::Login => match login(&ctx, &mut next_token).await {
                Ok(token) => {
                    login_backoff.reset();
                    login_at = None;
                    tracing::info!(agent = %ctx.spec.agent, role = %ctx.spec.role,
                        ttl_s = token.terms.ttl.as_secs(), "logged in to Vault");
                    ctx.update_login(|l| {
                        l.state = "logged_in";
                        l.logins += 1;
                        l.token_expires_at = rfc3339(from_now(token.terms.ttl));
                        l.last_error = None;
                    });
                    tokens.push(token);
                }
                Err(error) => {
                    tracing::warn!(agent = %ctx.spec.agent, %error, "Vault login failed");
                    metrics::counter!(crate::metrics::LOGIN_FAILURES, "agent" => ctx.spec.agent.clone())
                        .increment(1);
                    login_at = Some(now + login_backoff.next_delay());
                    ctx.update_login(|l| {
                        l.state = "failed";
                        l.last_error = Some(error);
                    });
                }
            },
            Due::RenewToken(i) => {
                let current = i + 1 == tokens.len();
                let token = &mut tokens[i];
                if now >= token.terms.expires_at() {
                    // Expired: Vault revoked it and its leases. What it issued is withdrawn,
                    // and a login (with its backoff) makes a new current token.
                    tracing::warn!(agent = %ctx.spec.agent,
                        "a Vault token expired before it could be replaced");
                    let id = token.id;
                    tokens.remove(i);
                    drop_token_credentials(&ctx, &mut secrets, id);
                    if current {
                        login_at.get_or_insert(now);
                    }
                } else if token.terms.next().1 == Step::Replace {
                    // Vault will not extend it: the current token is replaced by a login, an
                    // old one hands its credentials over to the current one.
                    token.retry = Some(token.terms.expires_at());
                    if current {
                        login_at.get_or_insert(now);
                    }
                    move_off(&mut secrets, token.id);
                } else {
                    let asked = token.terms.ttl.max(Duration::from_secs(1));
                    match token.session.renew_token(asked).await {
                        Ok(granted) => {
                            token.terms = token.terms.renewed(Instant::now(), asked, granted);
                            token.retry = None;
                            token.backoff.reset();
                            if current {
                                ctx.update_login(|l| {
                                    l.token_expires_at = rfc3339(from_now(granted))
                                });
                            }
                        }
                        Err(e) if e.is_permission_denied() => {
                            // Revoked or expired: its leases went with it.
                            tracing::warn!(agent = %ctx.spec.agent, error = %e,
                                "the Vault token was refused; logging in again");
                            let id = token.id;
                            tokens.remove(i);
                            drop_token_credentials(&ctx, &mut secrets, id);
                            if current {
                                login_at.get_or_insert(now);
                            }
                        }
                        Err(e) => {
                            let delay = token.backoff.next_delay();
                            token.retry =
                                Some(retry_at(now, delay, Some(token.terms.expires_at())));
                            tracing::warn!(agent = %ctx.spec.agent, error = %e,
                                "renewing the Vault token failed; retrying");
                        }
                    }
                }
            }
            Due::Obtain(i) => {
                let Some(token) = tokens.last() else {
                    login_at.get_or_insert(now);
                    continue;
                };
                let result = token.session.issue(&secrets[i].spec.source).await;
                let token_id = token.id;
                match result {
                    Ok(issued) => ctx.obtained(&mut secrets[i], token_id, issued),
                    Err(e) => {
                        if e.is_permission_denied() {
                            login_at.get_or_insert(now);
                        }
                        // A KV secret deleted in Vault is no longer the agent's to use.
                        if matches!(e, VaultError::Refused { status: 404, .. }) {
                            ctx.withdraw(&mut secrets[i]);
                        }
                        ctx.failed(&mut secrets[i], now, &e);
                    }
                }
            }
            Due::RenewSecret(i) => {
                let secret = &mut secrets[i];
                let Some(held) = secret.held.as_ref() else {
                    continue;
                };
                let Some(terms) = held.terms else {
                    continue;
                };
                let session = tokens
                    .iter()
                    .find(|t| t.id == held.token)
                    .map(|t| t.session.clone());
                let Some(session) = session else {
                    secret.replace_now = true;
                    continue;
                };
                let asked = terms.ttl.max(Duration::from_secs(1));
                match session.renew_lease(&held.lease_id, asked).await {
                    Ok(granted) => ctx.renewed(secret, Instant::now(), asked, granted),
                    Err(e) if e.is_lease_gone() => {
                        // Revoked in Vault (or expired): the credential no longer works, so
                        // it is withdrawn at once (sessions opened with it close), then replaced.
                        tracing::warn!(agent = %ctx.spec.agent, secret = %secret.spec.name,
                            error = %e, "the lease is gone; withdrawing the credential and \
                            issuing a new one");
                        ctx.withdraw(secret);
                    }
                    Err(e) => {
                        if e.is_permission_denied() {
                            // The token may be gone (revoked): log in again.
                            login_at.get_or_insert(now);
                        }
                        ctx.failed(secret, now, &e);
                    }
                }
            }
            Due::Expire(i) => {
                let secret = &mut secrets[i];
                tracing::warn!(agent = %ctx.spec.agent, secret = %secret.spec.name,
                    "the credential expired before it could be renewed or replaced; withdrawn");
                ctx.withdraw(secret);
            }
        }
        retire_unused_tokens(&ctx, &mut tokens, &secrets).await;
    }
    // Stopping (agent removed, deputyd stopping): revoking each token revokes every lease it
    // created, which drops the database users.
    for secret in &secrets {
        ctx.store.publish(&ctx.spec.agent, &secret.spec.name, None);
    }
    for token in tokens {
        match token.session.revoke_token().await {
            Ok(()) => tracing::info!(agent = %ctx.spec.agent, "Vault token and its leases revoked"),
            Err(e) => tracing::warn!(agent = %ctx.spec.agent, error = %e,
                "revoking the Vault token failed; its leases end with their TTL"),
        }
    }
}

/// The earliest thing to do.
fn next_due(tokens: &[Token], secrets: &[Secret], login_at: Option<Instant>) -> (Instant, Due) {
    let far = Instant::now() + Duration::from_secs(3600);
    let mut best = (far, Due::Nothing);
    let mut consider = |at: Instant, due: Due| {
        if at < best.0 {
            best = (at, due);
        }
    };
    if let Some(at) = login_at {
        consider(at, Due::Login);
    }
    for (i, token) in tokens.iter().enumerate() {
        let at = token.retry.unwrap_or_else(|| token.terms.next().0);
        consider(at, Due::RenewToken(i));
    }
    // A credential is issued under the current token, unless that token is about to be
    // replaced by a pending login (it would take the credential down with it).
    let can_issue = tokens
        .last()
        .is_some_and(|t| login_at.is_none() || t.terms.next().1 == Step::Renew);
    for (i, secret) in secrets.iter().enumerate() {
        if can_issue && (secret.held.is_none() || secret.replace_now) {
            consider(secret.retry.unwrap_or_else(Instant::now), Due::Obtain(i));
        }
        let Some(held) = &secret.held else {
            continue;
        };
        if let Some(terms) = held.terms {
            consider(terms.expires_at(), Due::Expire(i));
        }
        if secret.replace_now {
            continue;
        }
        let (at, step) = match held.terms {
            Some(terms) => terms.next(),
            None => (
                held.obtained + kv_refresh(&secret.spec.source),
                Step::Replace,
            ),
        };
        let at = secret.retry.unwrap_or(at);
        match step {
            Step::Renew => consider(at, Due::RenewSecret(i)),
            Step::Replace if can_issue => consider(at, Due::Obtain(i)),
            Step::Replace => {}
        }
    }
    best
}

fn kv_refresh(source: &Source) -> Duration {
    match source {
        Source::Kv { refresh, .. } => *refresh,
        Source::Database { .. } => Duration::from_secs(3600),
    }
}

/// Credentials issued under token `id` are replaced under the current one.
fn move_off(secrets: &mut [Secret], id: u64) {
    for secret in secrets.iter_mut() {
        if secret.held.as_ref().is_some_and(|h| h.token == id) {
            secret.replace_now = true;
        }
    }
}

/// Token `id` is gone, and the leases it created with it.
fn drop_token_credentials(ctx: &AgentContext, secrets: &mut [Secret], id: u64) {
    for secret in secrets.iter_mut() {
        if secret
            .held
            .as_ref()
            .is_some_and(|h| h.token == id && h.terms.is_some())
        {
            secret.retry = None;
            ctx.withdraw(secret);
        }
    }
}

/// Revokes every token that is not the current one and holds no credential in use.
async fn retire_unused_tokens(ctx: &AgentContext, tokens: &mut Vec<Token>, secrets: &[Secret]) {
    let Some(current) = tokens.last().map(|t| t.id) else {
        return;
    };
    let mut i = 0;
    while i < tokens.len() {
        let id = tokens[i].id;
        let used = secrets.iter().any(|s| {
            s.held
                .as_ref()
                .is_some_and(|h| h.token == id && h.terms.is_some())
        });
        if id == current || used {
            i += 1;
            continue;
        }
        let token = tokens.remove(i);
        if let Err(e) = token.session.revoke_token().await {
            tracing::warn!(agent = %ctx.spec.agent, error = %e,
                "revoking a replaced Vault token failed; it ends with its TTL");
        }
    }
}

async fn login(ctx: &AgentContext, next_id: &mut u64) -> Result<Token, String> {
    let settings = ctx.vault.settings();
    let jwt = ctx
        .jwt
        .fetch(&ctx.spec.agent, &settings.audience)
        .await
        .map_err(|e| format!("no JWT-SVID to log in with: {e}"))?;
    let (terms, session) = ctx
        .vault
        .login_jwt(&ctx.spec.role, &jwt)
        .await
        .map_err(|e| e.to_string())?;
    *next_id += 1;
    let (min, max) = ctx.backoff;
    Ok(Token {
        id: *next_id,
        session: Arc::new(session),
        terms: Terms {
            since: Instant::now(),
            ttl: if terms.ttl.is_zero() {
                Duration::from_secs(3600 * 24 * 365)
            } else {
                terms.ttl
            },
            renewable: terms.renewable,
            capped: false,
        },
        retry: None,
        backoff: Backoff::new(min, max),
    })
}

impl AgentContext {
    fn update_login(&self, f: impl FnOnce(&mut LoginStatus)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status.login);
        }
    }

    fn update_secret(&self, name: &str, f: impl FnOnce(&mut SecretStatus)) {
        if let Ok(mut status) = self.status.lock()
            && let Some(s) = status.secrets.iter_mut().find(|s| s.name == name)
        {
            f(s);
        }
    }

    fn obtained(&self, secret: &mut Secret, token: u64, issued: crate::vault::Issued) {
        let now = Instant::now();
        if let Some(held) = secret.held.as_mut()
            && held.terms.is_none()
            && issued.lease_id.is_empty()
            && held.credential.fields == issued.fields
        {
            // A KV secret read again, unchanged: the same credential (nothing re-rendered).
            held.obtained = now;
            secret.retry = None;
            secret.backoff.reset();
            return;
        }
        secret.generation += 1;
        secret.renewals = 0;
        secret.retry = None;
        secret.replace_now = false;
        secret.backoff.reset();
        let leased = !issued.lease_id.is_empty() && !issued.ttl.is_zero();
        let credential = Arc::new(Credential {
            fields: issued.fields,
            expires_at: leased.then(|| from_now(issued.ttl)),
            generation: secret.generation,
        });
        secret.held = Some(Held {
            lease_id: issued.lease_id,
            token,
            terms: leased.then_some(Terms {
                since: now,
                ttl: issued.ttl,
                renewable: issued.renewable,
                capped: false,
            }),
            obtained: now,
            credential: credential.clone(),
        });
        tracing::info!(agent = %self.spec.agent, secret = %secret.spec.name,
            path = %secret.spec.source.path(), generation = secret.generation,
            ttl_s = issued.ttl.as_secs(), "credential issued");
        metrics::counter!(crate::metrics::ISSUED, "agent" => self.spec.agent.clone(),
            "secret" => secret.spec.name.clone())
        .increment(1);
        crate::metrics::availability(&self.spec.agent, &secret.spec.name, true);
        crate::metrics::expiry(&self.spec.agent, &secret.spec.name, credential.expires_at);
        let expires_at = credential.expires_at.and_then(rfc3339);
        self.store
            .publish(&self.spec.agent, &secret.spec.name, Some(credential));
        let generation = secret.generation;
        self.update_secret(&secret.spec.name, |s| {
            s.state = "available";
            s.generation = generation;
            s.renewals = 0;
            s.expires_at = expires_at;
            s.last_error = None;
        });
    }

    fn renewed(&self, secret: &mut Secret, now: Instant, asked: Duration, granted: Duration) {
        let Some(held) = secret.held.as_mut() else {
            return;
        };
        let Some(terms) = held.terms else {
            return;
        };
        held.terms = Some(terms.renewed(now, asked, granted));
        let credential = Arc::new(Credential {
            expires_at: Some(from_now(granted)),
            ..(*held.credential).clone()
        });
        held.credential = credential.clone();
        secret.renewals += 1;
        secret.retry = None;
        secret.backoff.reset();
        metrics::counter!(crate::metrics::RENEWALS, "agent" => self.spec.agent.clone(),
            "secret" => secret.spec.name.clone())
        .increment(1);
        crate::metrics::expiry(&self.spec.agent, &secret.spec.name, credential.expires_at);
        let expires_at = credential.expires_at.and_then(rfc3339);
        self.store
            .publish(&self.spec.agent, &secret.spec.name, Some(credential));
        let renewals = secret.renewals;
        self.update_secret(&secret.spec.name, |s| {
            s.renewals = renewals;
            s.expires_at = expires_at;
            s.last_error = None;
        });
    }

    /// The credential no longer works: nothing may use it (a new one is issued next).
    fn withdraw(&self, secret: &mut Secret) {
        secret.held = None;
        secret.replace_now = false;
        self.store
            .publish(&self.spec.agent, &secret.spec.name, None);
        self.update_secret(&secret.spec.name, |s| {
            s.state = "unavailable";
            s.expires_at = None;
        });
        crate::metrics::availability(&self.spec.agent, &secret.spec.name, false);
    }

    fn failed(&self, secret: &mut Secret, now: Instant, error: &VaultError) {
        let expires = secret
            .held
            .as_ref()
            .and_then(|h| h.terms.map(|t| t.expires_at()));
        secret.retry = Some(retry_at(now, secret.backoff.next_delay(), expires));
        tracing::warn!(agent = %self.spec.agent, secret = %secret.spec.name, %error,
            still_valid = secret.held.is_some(), "obtaining or renewing a credential failed; retrying");
        metrics::counter!(crate::metrics::FAILURES, "agent" => self.spec.agent.clone(),
            "secret" => secret.spec.name.clone())
        .increment(1);
        let message = error.to_string();
        self.update_secret(&secret.spec.name, |s| s.last_error = Some(message));
    }
}

/// The status of an agent before anything happened.
pub(crate) fn initial_status(spec: &AgentSecrets) -> AgentSecretsStatus {
    AgentSecretsStatus {
        agent: spec.agent.clone(),
        role: spec.role.clone(),
        login: LoginStatus {
            state: "pending",
            logins: 0,
            token_expires_at: None,
            last_error: None,
        },
        secrets: spec
            .secrets
            .iter()
            .filter(|s| !s.per_task)
            .map(|s| SecretStatus {
                name: s.name.clone(),
                kind: s.source.kind(),
                path: s.source.path(),
                state: "pending",
                generation: 0,
                renewals: 0,
                expires_at: None,
                last_error: None,
            })
            .collect(),
    }
}
