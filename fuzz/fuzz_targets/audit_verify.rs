//! Fuzzes the audit trail's verifier (`deputy audit verify`) with edits of a real trail: it
//! never panics, and what it passes is what a hash chain vouches for — the records of the
//! original trail, in order, but for the last one read (which only a checkpoint vouches for)
//! and any cut off after it. Every other edit is named. The input is where to edit (two bytes)
//! and what to write there (the rest).
#![no_main]

use std::sync::LazyLock;

use deputy_audit::record::CallRecord;
use deputy_audit::{Checkpoints, Event, OnFailure, Trail};
use libfuzzer_sys::fuzz_target;

/// A trail of an `opened` record and eight calls, written by the real writer.
static TRAIL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("deputy-fuzz-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let trail = Trail::open(&dir, OnFailure::Refuse, Checkpoints::default()).expect("open");
    for i in 0..8 {
        trail
            .append(Event::Call(CallRecord {
                request_id: format!("r{i}"),
                status: 200,
                ..CallRecord::default()
            }))
            .expect("append");
    }
    drop(trail);
    let text = deputy_audit::read(&dir).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(deputy_audit::verify::verify(&text, None).first_bad.is_none());
    text
});

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes, as a trail.
    let _ = deputy_audit::verify::verify(data, None);

    let [at_high, at_low, replacement @ ..] = data else {
        return;
    };
    let text = &*TRAIL;
    let at = usize::from(u16::from_be_bytes([*at_high, *at_low])) % text.len();
    let end = (at + replacement.len()).min(text.len());
    let mut edited = text.clone();
    edited.splice(at..end, replacement.iter().copied());
    if edited == *text {
        return;
    }
    let report = deputy_audit::verify::verify(&edited, None);
    if report.first_bad.is_some() {
        return;
    }
    // Passed: the records as the verifier reads them (non-empty lines) must be the original's,
    // but for the last one read.
    let records = |text: &[u8]| -> Vec<Vec<u8>> {
        text.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let (original, read) = (records(text), records(&edited));
    assert!(
        read.len() <= original.len(),
        "an edit added records unseen: {report:?}"
    );
    let vouched = read.len().saturating_sub(1);
    assert_eq!(
        read[..vouched],
        original[..vouched],
        "an edit at byte {at} of a record before the last went unseen: {report:?}"
    );
});
