//! Checking a trail: every record in order (`seq` 1, 2, 3...) and chained to the one before it
//! (`prev` is the hash of the line before). An edit, a deletion, an insertion, a swap or a cut
//! at the front breaks one of the two at the first record after it, which is named.
//!
//! Checkpoints (records signed with the node's SVID) are checked against the trust bundle: each
//! must be a valid signature, at the time it was written, over the hash the chain had there, so
//! an edit before it cannot be hidden by recomputing the chain. Records after the last
//! checkpoint have only the chain: its end could be cut, or its last record changed; the report
//! says how many records that is.

use std::path::Path;

use serde::Serialize;

use deputy_delegation::verify_signed;
use deputy_identity::TrustAnchors;
use time::format_description::well_known::Rfc3339;

use crate::checkpoint::{Claims, TYP};
use crate::record::{Event, Record};
use crate::{GENESIS, hash};

/// What a check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// The first record that does not follow from the ones before it, if one does not.
    pub first_bad: Option<Bad>,
    /// Records after the last checkpoint: only the chain vouches for them (their end could be
    /// cut, or the last changed, unseen).
    pub unprotected_tail: u64,
    /// Checkpoints found.
    pub checkpoints: u64,
    /// Whether their signatures were checked (a trust bundle was given).
    pub signatures_checked: bool,
    /// The SPIFFE IDs that signed them.
    pub signers: Vec<String>,
}

/// A record that does not follow.
#[derive(Debug, Clone, Serialize)]
pub struct Bad {
    /// Its line in the file, from 1.
    pub line: u64,
    /// What is wrong, in words.
    pub why: String,
}

/// Checks the trail in `dir`; checkpoints' signatures against `anchors`, if given.
pub fn verify_dir(dir: &Path, anchors: Option<&TrustAnchors>) -> std::io::Result<Report> {
    let text = crate::read(dir)?;
    Ok(verify(&text, anchors))
}

/// Checks the lines of `text`; checkpoints' signatures against `anchors`, if given.
pub fn verify(text: &[u8], anchors: Option<&TrustAnchors>) -> Report {
    let mut records = 0u64;
    let mut expected_prev = GENESIS.to_owned();
    let mut checkpoints = 0u64;
    let mut last_checkpoint = 0u64;
    let mut signers: Vec<String> = Vec::new();
    let bad = |line: u64, why: String| Report {
        records: line.saturating_sub(1),
        first_bad: Some(Bad { line, why }),
        signatures_checked: anchors.is_some(),
        ..Report::default()
    };
    let ends_whole = text.last().is_none_or(|b| *b == b'\n');
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for (index, line) in lines.iter().enumerate() {
        let number = index as u64 + 1;
        if index + 1 == lines.len() && !ends_whole {
            return bad(
                number,
                "the file ends in a partial record (deputyd cuts it off when it next opens \
                 the trail)"
                    .into(),
            );
        }
        let record: Record = match serde_json::from_slice(line) {
            Ok(record) => record,
            Err(e) => return bad(number, format!("not a record: {e}")),
        };
        // Records are numbered from 1 without gaps: line n holds seq n.
        let expected_seq = number;
        if record.seq != expected_seq {
            let why = if record.seq > expected_seq {
                format!(
                    "seq {} follows seq {}: {} record(s) before it are missing",
                    record.seq,
                    expected_seq - 1,
                    record.seq - expected_seq
                )
            } else {
                format!(
                    "seq {} follows seq {}: records were reordered or inserted",
                    record.seq,
                    expected_seq - 1
                )
            };
            return bad(number, why);
        }
        if record.prev != expected_prev {
            let why = if number == 1 {
                "the first record does not start the chain: records before it were removed"
                    .to_owned()
            } else {
                format!(
                    "its prev is not the hash of line {}: that record was changed, or replaced",
                    number - 1
                )
            };
            return bad(number, why);
        }
        if let Event::Checkpoint { upto, jws } = &record.event {
            if upto.checked_add(1) != Some(record.seq) {
                return bad(
                    number,
                    format!("a checkpoint for {upto} records at seq {}", record.seq),
                );
            }
            if let Some(anchors) = anchors {
                match checked(jws, &record, anchors) {
                    Ok(signer) => {
                        if !signers.contains(&signer) {
                            signers.push(signer);
                        }
                    }
                    Err(why) => return bad(number, why),
                }
            }
            checkpoints += 1;
            last_checkpoint = number;
        }
        expected_prev = hash(line);
        records += 1;
    }
    Report {
        records,
        first_bad: None,
        unprotected_tail: records - last_checkpoint,
        checkpoints,
        signatures_checked: anchors.is_some(),
        signers,
    }
}

/// The signer of checkpoint `jws` in `record`, if it is a valid signature (at the time the
/// record was written) over what the chain held there.
fn checked(jws: &str, record: &Record, anchors: &TrustAnchors) -> Result<String, String> {
    let at = time::OffsetDateTime::parse(&record.time, &Rfc3339).map_err(|e| {
        format!(
            "the checkpoint's time {:?} cannot be read: {e}",
            record.time
        )
    })?;
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(at.unix_timestamp()).unwrap_or(0));
    let signed = verify_signed::<Claims>(jws, TYP, anchors, at)
        .map_err(|e| format!("the checkpoint's signature does not verify: {e}"))?;
    let claims = signed.claims;
    if claims.iss != signed.signer.to_string() {
        return Err(format!(
            "the checkpoint names {} but was signed by {}",
            claims.iss, signed.signer
        ));
    }
    if claims.upto.checked_add(1) != Some(record.seq) || claims.hash != record.prev {
        return Err(format!(
            "the checkpoint signed for {} records ending in {} but the chain holds {} ending \
             in {}: records before it were changed and the chain recomputed",
            claims.upto,
            claims.hash,
            record.seq - 1,
            record.prev
        ));
    }
    Ok(claims.iss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FILE;
    use crate::record::{CallRecord, Event};
    use crate::trail::{OnFailure, Trail};

    /// A trail of `n` calls after its `opened` record, as text.
    fn trail_of(n: u16) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail = Trail::open(dir.path(), OnFailure::Refuse, crate::Checkpoints::default())
            .expect("open");
        append_calls(&trail, n);
        drop(trail);
        std::fs::read(dir.path().join(FILE)).expect("read")
    }

    /// Appends `n` calls, `r0` to `r{n-1}`.
    fn append_calls(trail: &Trail, n: u16) {
        for i in 0..n {
            trail
                .append(Event::Call(CallRecord {
                    request_id: format!("r{i}"),
                    status: 200,
                    ..CallRecord::default()
                }))
                .expect("append");
        }
    }

    fn lines(text: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(text)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn joined(lines: &[String]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_checkpoint_claiming_every_possible_record_is_named_not_a_crash() {
        // Found by the audit_verify fuzz target: `upto + 1` overflowed.
        let text = format!(
            "{{\"seq\":1,\"time\":\"\",\"prev\":\"{GENESIS}\",\"type\":\"checkpoint\",\"upto\":{},\"jws\":\"\"}}\n",
            u64::MAX
        );
        let report = verify(text.as_bytes(), None);
        assert_eq!(report.first_bad.map(|b| b.line), Some(1));
    }

    #[test]
    fn a_whole_trail_verifies_and_every_kind_of_tampering_is_named() {
        let text = trail_of(5);
        let report = verify(&text, None);
        assert_eq!((report.records, report.unprotected_tail), (6, 6));
        assert!(report.first_bad.is_none());
        let original = lines(&text);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"status\":200", "\"status\":500");
        let found = verify(&joined(&edited), None).first_bad.expect("edit");
        assert_eq!(found.line, 4, "{found:?}");
        assert!(found.why.contains("line 3"), "{found:?}");

        let mut deleted = original.clone();
        deleted.remove(2);
        let found = verify(&joined(&deleted), None).first_bad.expect("deletion");
        assert!(
            (found.line, found.why.contains("missing")) == (3, true),
            "{found:?}"
        );

        let mut swapped = original.clone();
        swapped.swap(2, 3);
        let found = verify(&joined(&swapped), None).first_bad.expect("swap");
        assert_eq!(found.line, 3, "{found:?}");

        let mut inserted = original.clone();
        inserted.insert(3, original[3].clone());
        let found = verify(&joined(&inserted), None)
            .first_bad
            .expect("insertion");
        assert_eq!(found.line, 5, "{found:?}");

        let front_cut = original[2..].to_vec();
        let found = verify(&joined(&front_cut), None)
            .first_bad
            .expect("front cut");
        assert_eq!(found.line, 1, "{found:?}");

        let mut partial = joined(&original);
        partial.truncate(partial.len() - 10);
        let found = verify(&partial, None).first_bad.expect("partial");
        assert!(found.why.contains("partial"), "{found:?}");
    }

    #[derive(Debug)]
    struct TestSigner(deputy_delegation::LinkSigner);

    impl crate::checkpoint::Signer for TestSigner {
        fn sign(&self, upto: u64, hash: &str, iat: i64) -> Result<String, String> {
            crate::checkpoint::sign(&self.0, upto, hash, iat)
        }
    }

    /// Each line of `lines` re-chained to the one before it, as a forger who can write the
    /// file would.
    fn rechained(lines: &[String]) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        lines
            .iter()
            .map(|line| {
                let mut record: serde_json::Value = serde_json::from_str(line).expect("json");
                record["prev"] = prev.clone().into();
                let line = record.to_string();
                prev = hash(line.as_bytes());
                line
            })
            .collect()
    }

    /// A trail in a new directory whose checkpoints, due every two records, are signed by a
    /// test node of `domain`.
    fn signed_trail(
        domain: &deputy_delegation::testing::TestDomain,
    ) -> (tempfile::TempDir, std::sync::Arc<Trail>, String) {
        let node = domain.agent("node");
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = crate::Checkpoints {
            every_records: 2,
            every: std::time::Duration::from_secs(3600),
        };
        let trail = Trail::open(dir.path(), OnFailure::Refuse, checkpoints).expect("open");
        trail.set_signer(std::sync::Arc::new(TestSigner(node.signer())));
        (dir, trail, node.id.to_string())
    }

    #[test]
    fn checkpoints_due_by_count_are_signed_by_whoever_the_waker_wakes_not_the_record() {
        let domain = deputy_delegation::testing::TestDomain::new("example.org");
        let (dir, trail, _) = signed_trail(&domain);
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = woken.clone();
        trail.checkpoint_in_background(std::sync::Arc::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        let append = |i: u16| {
            trail
                .append(Event::Call(CallRecord {
                    request_id: format!("r{i}"),
                    ..CallRecord::default()
                }))
                .expect("append");
        };
        append(1);
        append(2);
        append(3);
        let read = || verify(&std::fs::read(dir.path().join(FILE)).expect("read"), None);
        // Due after the second record: the waker was told (twice: the third record found it
        // still due), and no record signed it.
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(read().checkpoints, 0);
        trail.checkpoint_if_due();
        let report = read();
        assert_eq!(
            (report.checkpoints, report.unprotected_tail),
            (1, 0),
            "{report:?}"
        );
        // Not due again until two more records.
        trail.checkpoint_if_due();
        assert_eq!(read().checkpoints, 1);
    }

    #[test]
    fn a_signed_checkpoint_shows_an_edit_that_the_chain_was_recomputed_to_hide() {
        let domain = deputy_delegation::testing::TestDomain::new("example.org");
        let mut set = spiffe::X509BundleSet::new();
        set.add_bundle(domain.bundle());
        let anchors = TrustAnchors::from_bundles(&set);
        let (dir, trail, node_id) = signed_trail(&domain);
        append_calls(&trail, 5);
        drop(trail);
        let text = std::fs::read(dir.path().join(FILE)).expect("read");
        let report = verify(&text, Some(&anchors));
        assert!(report.first_bad.is_none(), "{report:?}");
        assert_eq!(
            (report.checkpoints, report.unprotected_tail),
            (2, 1),
            "{report:?}"
        );
        assert_eq!(report.signers, [node_id]);

        // A forger changes a call and recomputes the chain after it: the chain alone passes,
        // the first checkpoint after the edit does not.
        let mut forged = lines(&text);
        forged[1] = forged[1].replace("\"status\":200", "\"status\":404");
        let forged = joined(&rechained(&forged));
        assert!(verify(&forged, None).first_bad.is_none());
        let found = verify(&forged, Some(&anchors)).first_bad.expect("caught");
        assert!(found.why.contains("chain recomputed"), "{found:?}");
        assert_eq!(found.line, 4, "{found:?}");

        // Another trust domain's bundle does not vouch for this node.
        let other = deputy_delegation::testing::TestDomain::new("other.org");
        let mut set = spiffe::X509BundleSet::new();
        set.add_bundle(other.bundle());
        let strangers = TrustAnchors::from_bundles(&set);
        let found = verify(&text, Some(&strangers))
            .first_bad
            .expect("untrusted");
        assert!(found.why.contains("does not verify"), "{found:?}");
    }
}
