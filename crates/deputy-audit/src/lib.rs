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

/// Every file of the trail in `dir`, oldest first: the rotated ones (`audit.SEQ.jsonl`, by
/// SEQ), then the one being written.
pub fn files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut rotated: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.") && n.ends_with(".jsonl") && n != FILE)
        })
        .collect();
    rotated.sort();
    let current = dir.join(FILE);
    if current.exists() {
        rotated.push(current);
    }
    Ok(rotated)
}

/// The whole trail in `dir`, across its files, as one text.
pub fn read(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    for file in files(dir)? {
        text.extend(std::fs::read(file)?);
    }
    Ok(text)
}

/// What the first record of a trail carries as `prev`.
pub const GENESIS: &str = "genesis";
