//! Deputy's delegation chains (the `Deputy-Delegation` header; specification in
//! `docs/delegation.md`).
//!
//! A chain is an ordered list of links, oldest first. Each link is a compact JWS signed with
//! the delegating agent's X.509-SVID key, its SVID chain in `x5c`, saying "`iss` lets `aud`
//! act, for principal `sub`, in `task`, with `scope`, until `exp`", and hashing the link before
//! it. Every hop verifies every link offline against the trust bundles, and binds the last link
//! to the mTLS peer it arrived from.
//!
//! - [`link`]: claims, signing, hashes. [`scope`]: scope coverage.
//! - [`extend`](mod@extend): starting and narrowing chains. [`verify`]: the verifier and its
//!   cache.
//! - [`signed`]: SVID-signed documents of any type (links, revocations).
//! - [`error`]: one error, with a stable code, per broken rule.

pub mod error;
pub mod extend;
pub mod link;
pub mod scope;
pub mod signed;
pub mod verify;

pub use error::ChainError;
pub use extend::{ExtendError, Grant, extend, originate};
pub use link::{Budget, LinkClaims, LinkSigner, SignError, link_hash, unverified_claims};
pub use signed::{Signed, SignedError, verify_signed};
pub use verify::{ChainVerifier, VerifiedChain, VerifyOptions};

/// Counter: link verifications answered from the cache.
pub const CACHE_HITS: &str = "deputy_chain_cache_hits_total";
/// Counter: link verifications done in full.
pub const CACHE_MISSES: &str = "deputy_chain_cache_misses_total";

#[cfg(feature = "testing")]
pub mod testing;
