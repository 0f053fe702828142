//! Checkpoints: a record, every so many records or seconds, carrying a statement signed with
//! the node's own SVID (a compact JWS, the SVID chain in `x5c`, like a delegation link) that
//! the trail held `upto` records ending in `hash`. Anyone with the trust bundle can check it
//! offline; an edit before a checkpoint cannot be hidden by recomputing the chain after it,
//! because the signature covers the hash the chain had.

use serde::{Deserialize, Serialize};

/// The `typ` of a checkpoint statement.
pub const TYP: &str = "deputy-audit-checkpoint+jwt";

/// What a checkpoint's signer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The node's SPIFFE ID (the signer's).
    pub iss: String,
    /// The trail held this many records (the last is `seq` `upto`)...
    pub upto: u64,
    /// ...the last of which hashes to this.
    pub hash: String,
    /// When (unix seconds).
    pub iat: i64,
}

/// Signs checkpoint statements with the node's SVID.
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// The statement of `claims`' other fields, signed as a compact JWS of type [`TYP`]; the
    /// signer fills in `iss`.
    fn sign(&self, upto: u64, hash: &str, iat: i64) -> Result<String, String>;
}

/// The statement that the trail held `upto` records ending in `hash`, at `iat`, signed with
/// `svid` (its SPIFFE ID as `iss`).
pub fn sign(
    svid: &deputy_delegation::LinkSigner,
    upto: u64,
    hash: &str,
    iat: i64,
) -> Result<String, String> {
    let claims = Claims {
        iss: svid.spiffe_id().to_string(),
        upto,
        hash: hash.to_owned(),
        iat,
    };
    svid.sign_document(TYP, &claims).map_err(|e| e.to_string())
}
