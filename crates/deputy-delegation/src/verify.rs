//! Verifying a chain hop by hop: each link's signature and SVID, then the rules that bind the
//! links together and to the mTLS connection the chain arrived on.
//!
//! Signature and certificate-path results are cached by link hash (bounded LRU); time checks
//! never are: every verification re-checks expiry against the current clock.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deputy_identity::TrustAnchors;
use spiffe::SpiffeId;

use crate::error::ChainError;
use crate::link::{LINK_TYP, LinkClaims, link_hash};
use crate::scope::first_uncovered;
use crate::signed::{SignedError, verify_signed};

/// Limits and tolerances of verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Clock skew tolerated on the links' `iat` and `exp` (certificates are checked exactly).
    pub skew: Duration,
    /// Most links a chain may have.
    pub max_depth: usize,
    /// Largest header value accepted, in bytes.
    pub max_header_bytes: usize,
    /// Links whose signature checks are cached.
    pub cache_size: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(30),
            max_depth: 8,
            max_header_bytes: 16 * 1024,
            cache_size: 4096,
        }
    }
}

/// A link whose signature and SVID were verified (time aside).
#[derive(Debug, Clone)]
struct CheckedLink {
    claims: LinkClaims,
    /// Validity window of the x5c chain (latest start, earliest end), unix seconds.
    certs_valid_from: i64,
    certs_valid_until: i64,
}

/// A chain that passed every rule.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    /// The links' claims, oldest first.
    pub links: Vec<LinkClaims>,
    /// The links as received (compact JWS), oldest first.
    pub compact: Vec<String>,
    /// Each link's hash.
    pub hashes: Vec<String>,
}

impl VerifiedChain {
    /// The last link (a verified chain is never empty).
    pub fn last(&self) -> &LinkClaims {
        &self.links[self.links.len() - 1]
    }

    /// The principal the task acts for.
    pub fn principal(&self) -> &str {
        &self.links[0].sub
    }

    /// The task id.
    pub fn task(&self) -> &str {
        &self.links[0].task
    }

    /// The agent that started the task: the signer of the first link.
    pub fn originator(&self) -> &str {
        &self.links[0].iss
    }

    /// The ordered SPIFFE IDs of the actors: every delegator, then the final delegate.
    pub fn actors(&self) -> Vec<&str> {
        self.links
            .iter()
            .map(|l| l.iss.as_str())
            .chain(std::iter::once(self.last().aud.as_str()))
            .collect()
    }

    /// The header value that carries this chain.
    pub fn header_value(&self) -> String {
        self.compact.join(", ")
    }
}

type Cache = lru::LruCache<String, Arc<CheckedLink>>;

/// Verifies chains; holds the cache.
#[derive(Debug)]
pub struct ChainVerifier {
    options: VerifyOptions,
    /// The cache, with the anchors its entries were verified against: new anchors empty it.
    cache: Mutex<(Option<Arc<TrustAnchors>>, Cache)>,
}

impl ChainVerifier {
    /// A verifier with `options`.
    pub fn new(options: VerifyOptions) -> Self {
        let size = NonZeroUsize::new(options.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            options,
            cache: Mutex::new((None, lru::LruCache::new(size))),
        }
    }

    /// Forgets every cached link check.
    pub fn clear_cache(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.1.clear();
    }

    /// The options in force.
    pub fn options(&self) -> &VerifyOptions {
        &self.options
    }

    /// Verifies `header` (the `Deputy-Delegation` value) received from `peer` (the mTLS
    /// identity) by `local` (the agent being called), at `now`.
    pub fn verify(
        &self,
        header: &str,
        anchors: &Arc<TrustAnchors>,
        peer: &SpiffeId,
        local: &SpiffeId,
        now: SystemTime,
    ) -> Result<VerifiedChain, ChainError> {
        if header.len() > self.options.max_header_bytes {
            return Err(ChainError::HeaderTooLarge {
                size: header.len(),
                limit: self.options.max_header_bytes,
            });
        }
        let compact: Vec<&str> = header.split(',').map(str::trim).collect();
        if compact.len() > self.options.max_depth {
            return Err(ChainError::TooDeep {
                depth: compact.len(),
                limit: self.options.max_depth,
            });
        }
        let now_secs = unix(now);
        let skew = i64::try_from(self.options.skew.as_secs()).unwrap_or(i64::MAX / 4);
        let mut links: Vec<LinkClaims> = Vec::with_capacity(compact.len());
        let mut hashes: Vec<String> = Vec::with_capacity(compact.len());
        let mut signers = HashSet::new();

        for (index, link) in compact.iter().enumerate() {
            if link.is_empty() {
                return Err(ChainError::Malformed {
                    index,
                    reason: "empty link (a stray comma?)".into(),
                });
            }
            let hash = link_hash(link);
            let checked = self.checked_link(index, link, &hash, anchors, now)?;
            if now_secs < checked.certs_valid_from || now_secs > checked.certs_valid_until {
                return Err(ChainError::UntrustedSigner {
                    index,
                    reason: "the x5c certificate is not valid now".into(),
                });
            }
            let claims = &checked.claims;
            match (index, &claims.prev) {
                (0, None) => {}
                (0, Some(_)) => return Err(ChainError::BrokenPrev { index }),
                (_, Some(prev)) if *prev == hashes[index - 1] => {}
                _ => return Err(ChainError::BrokenPrev { index }),
            }
            if let Some(before) = links.last() {
                if claims.iss != before.aud {
                    return Err(ChainError::AudienceMismatch {
                        index,
                        iss: claims.iss.clone(),
                        expected: before.aud.clone(),
                    });
                }
                if claims.sub != links[0].sub {
                    return Err(ChainError::PrincipalChanged {
                        index,
                        expected: links[0].sub.clone(),
                        found: claims.sub.clone(),
                    });
                }
                if claims.task != links[0].task {
                    return Err(ChainError::TaskChanged {
                        index,
                        expected: links[0].task.clone(),
                        found: claims.task.clone(),
                    });
                }
                if let Some(scope) = first_uncovered(&before.scope, &claims.scope) {
                    return Err(ChainError::ScopeEscalation {
                        index,
                        scope: scope.to_owned(),
                    });
                }
                if claims.exp > before.exp {
                    return Err(ChainError::ExpiryWidened { index });
                }
                if let Some(limit) = before.budget
                    && claims.budget.is_none_or(|b| b.calls > limit.calls)
                {
                    return Err(ChainError::BudgetWidened { index });
                }
            }
            if now_secs > claims.exp + skew {
                return Err(ChainError::Expired {
                    index,
                    seconds_ago: now_secs - claims.exp,
                });
            }
            if claims.iat > now_secs + skew {
                return Err(ChainError::IssuedInFuture {
                    index,
                    seconds_ahead: claims.iat - now_secs,
                });
            }
            if !signers.insert(claims.iss.clone()) {
                return Err(ChainError::Cycle {
                    index,
                    iss: claims.iss.clone(),
                });
            }
            links.push(claims.clone());
            hashes.push(hash);
        }

        let last = links.last().ok_or_else(|| ChainError::Malformed {
            index: 0,
            reason: "the chain has no link".into(),
        })?;
        if last.iss != peer.to_string() {
            return Err(ChainError::PeerMismatch {
                iss: last.iss.clone(),
                peer: peer.to_string(),
            });
        }
        if last.aud != local.to_string() {
            return Err(ChainError::NotForThisAgent {
                aud: last.aud.clone(),
                local: local.to_string(),
            });
        }
        Ok(VerifiedChain {
            links,
            compact: compact.into_iter().map(str::to_owned).collect(),
            hashes,
        })
    }

    /// The signature and SVID checks of one link, from the cache or done now.
    fn checked_link(
        &self,
        index: usize,
        link: &str,
        hash: &str,
        anchors: &Arc<TrustAnchors>,
        now: SystemTime,
    ) -> Result<Arc<CheckedLink>, ChainError> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let (built_with, entries) = &mut *cache;
            if built_with.as_ref().is_some_and(|a| Arc::ptr_eq(a, anchors)) {
                if let Some(hit) = entries.get(hash) {
                    metrics::counter!(crate::CACHE_HITS).increment(1);
                    return Ok(hit.clone());
                }
            } else {
                entries.clear();
                *built_with = Some(anchors.clone());
            }
        }
        metrics::counter!(crate::CACHE_MISSES).increment(1);
        let checked = Arc::new(check_link(index, link, anchors, now)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0.as_ref().is_some_and(|a| Arc::ptr_eq(a, anchors)) {
            cache.1.put(hash.to_owned(), checked.clone());
        }
        Ok(checked)
    }
}

/// Verifies one link's x5c chain and signature; the claims are returned unchecked otherwise.
fn check_link(
    index: usize,
    link: &str,
    anchors: &TrustAnchors,
    now: SystemTime,
) -> Result<CheckedLink, ChainError> {
    let signed =
        verify_signed::<LinkClaims>(link, LINK_TYP, anchors, now).map_err(|e| match e {
            SignedError::Untrusted(reason) => ChainError::UntrustedSigner { index, reason },
            SignedError::BadSignature => ChainError::BadSignature { index },
            SignedError::Malformed(reason) => ChainError::Malformed { index, reason },
        })?;
    if signed.claims.iss != signed.signer.to_string() {
        return Err(ChainError::IssuerMismatch {
            index,
            iss: signed.claims.iss,
            signer: signed.signer.to_string(),
        });
    }
    Ok(CheckedLink {
        claims: signed.claims,
        certs_valid_from: signed.certs_valid_from,
        certs_valid_until: signed.certs_valid_until,
    })
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
