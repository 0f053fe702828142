//! Checking a trail: every record in order (`seq` 1, 2, 3...) and chained to the one before it
//! (`prev` is the hash of the line before). An edit, a deletion, an insertion, a swap or a cut
//! at the front breaks one of the two at the first record after it, which is named.
//!
//! The chain alone cannot show that records were cut from the end, or that the last record was
//! changed: the report says how many records at the end nothing after them vouches for.

use std::path::Path;

use serde::Serialize;

use crate::record::Record;
use crate::{FILE, GENESIS, hash};

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// The first record that does not follow from the ones before it, if one does not.
    pub first_bad: Option<Bad>,
    /// Records at the end that no later record vouches for (the last one, whose edit or
    /// removal the chain cannot show).
    pub unprotected_tail: u64,
}

/// A record that does not follow.
#[derive(Debug, Clone, Serialize)]
pub struct Bad {
    /// Its line in the file, from 1.
    pub line: u64,
    /// What is wrong, in words.
    pub why: String,
}

/// Checks the trail in `dir`.
pub fn verify_dir(dir: &Path) -> std::io::Result<Report> {
    let text = std::fs::read(dir.join(FILE))?;
    Ok(verify(&text))
}

/// Checks the lines of `text`.
pub fn verify(text: &[u8]) -> Report {
    let mut records = 0u64;
    let mut expected_prev = GENESIS.to_owned();
    let bad = |line: u64, why: String| Report {
        records: line.saturating_sub(1),
        first_bad: Some(Bad { line, why }),
        unprotected_tail: 0,
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
        expected_prev = hash(line);
        records += 1;
    }
    Report {
        records,
        first_bad: None,
        unprotected_tail: u64::from(records > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CallRecord, Event};
    use crate::trail::{OnFailure, Trail};

    /// A trail of `n` calls after its `opened` record, as text.
    fn trail_of(n: u16) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail = Trail::open(dir.path(), OnFailure::Refuse).expect("open");
        for i in 0..n {
            trail
                .append(Event::Call(CallRecord {
                    request_id: format!("r{i}"),
                    status: 200,
                    ..CallRecord::default()
                }))
                .expect("append");
        }
        drop(trail);
        std::fs::read(dir.path().join(FILE)).expect("read")
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
    fn a_whole_trail_verifies_and_every_kind_of_tampering_is_named() {
        let text = trail_of(5);
        let report = verify(&text);
        assert_eq!((report.records, report.unprotected_tail), (6, 1));
        assert!(report.first_bad.is_none());
        let original = lines(&text);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"status\":200", "\"status\":500");
        let found = verify(&joined(&edited)).first_bad.expect("edit");
        assert_eq!(found.line, 4, "{found:?}");
        assert!(found.why.contains("line 3"), "{found:?}");

        let mut deleted = original.clone();
        deleted.remove(2);
        let found = verify(&joined(&deleted)).first_bad.expect("deletion");
        assert!(
            (found.line, found.why.contains("missing")) == (3, true),
            "{found:?}"
        );

        let mut swapped = original.clone();
        swapped.swap(2, 3);
        let found = verify(&joined(&swapped)).first_bad.expect("swap");
        assert_eq!(found.line, 3, "{found:?}");

        let mut inserted = original.clone();
        inserted.insert(3, original[3].clone());
        let found = verify(&joined(&inserted)).first_bad.expect("insertion");
        assert_eq!(found.line, 5, "{found:?}");

        let front_cut = original[2..].to_vec();
        let found = verify(&joined(&front_cut)).first_bad.expect("front cut");
        assert_eq!(found.line, 1, "{found:?}");

        let mut partial = joined(&original);
        partial.truncate(partial.len() - 10);
        let found = verify(&partial).first_bad.expect("partial");
        assert!(found.why.contains("partial"), "{found:?}");
    }
}
