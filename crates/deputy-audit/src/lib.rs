//! One audit trail per node: every call (with its decision, the task and principal it acted
//! for, and its outcome), every revocation and approval decision, as typed records appended to
//! JSON Lines, each carrying the hash of the record before it.
//!
//! - [`record`]: the record types, built from typed values: nothing that holds a secret (a
//!   header value, a body, a query, a credential) has a field to go in.
//! - [`trail`]: the writer. A record is written (one `write(2)` under a lock) before the call's
//!   answer leaves deputyd, so a call whose answer was sent is in the file even if deputyd is
//!   killed; `fsync` runs off the request path, at most every few milliseconds (group
//!   commit). When the file cannot be written, deputyd refuses calls (`audit-unavailable`) or,
//!   if the operator chose, serves on and counts what it lost.
//! - [`checkpoint`]: every so many records or seconds, a statement signed with the node's SVID
//!   that vouches for the trail so far.
//! - [`verify`]: the chain and the checkpoints checked, the first bad record named. [`query`]:
//!   who did what for whom, across nodes' trails.

pub mod checkpoint;
pub mod query;
pub mod record;
pub mod trail;
pub mod verify;

pub use record::{CallRecord, Event, Record};
pub use trail::{AuditError, Checkpoints, OnFailure, Trail};

/// The trail's file in its directory.
pub const FILE: &str = "audit.jsonl";

/// SHA-256 of `line`, hex: what the next record carries as `prev`.
pub fn hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// What the first record of a trail carries as `prev`.
pub const GENESIS: &str = "genesis";
