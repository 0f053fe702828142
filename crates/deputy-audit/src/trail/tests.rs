//! The trail's writer: chain, reopen, rotation, faults, export.

use super::*;
use crate::record::CallRecord;

fn call(n: u16) -> Event {
    Event::Call(CallRecord {
        direction: "outbound".into(),
        agent: "a".into(),
        status: n,
        request_id: format!("r{n}"),
        ..CallRecord::default()
    })
}

#[test]
fn records_are_chained_and_the_chain_goes_on_after_a_reopen_and_a_partial_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let trail =
            Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
        trail.append(call(200)).expect("append");
    }
    // A crash in the middle of a write leaves half a line.
    let path = dir.path().join(FILE);
    let mut file = OpenOptions::new().append(true).open(&path).expect("file");
    file.write_all(b"{\"seq\":3,\"ti").expect("partial");
    drop(file);
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("reopen");
    trail.append(call(201)).expect("append");
    drop(trail);
    let report = crate::verify::verify_dir(dir.path(), None).expect("verify");
    assert_eq!(report.records, 4, "{report:?}");
    assert!(report.first_bad.is_none(), "{report:?}");
}

#[test]
fn one_writer_per_trail_and_a_removed_file_is_noticed_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
    let second = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default());
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.to_string().contains("in use by another process")),
        "{second:?}"
    );
    std::fs::remove_file(dir.path().join(FILE)).expect("remove");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !trail.replaced.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the removal was not noticed");
        std::thread::sleep(SYNC_EVERY);
    }
    let refused = trail.append(call(200)).expect_err("nowhere to write");
    assert!(
        refused.to_string().contains("removed or replaced"),
        "{refused}"
    );
    assert_eq!(trail.lost(), 1);
    assert!(!trail.available());
}

#[test]
fn a_trail_rotates_by_size_and_its_chain_goes_on_across_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
    trail.set_rotation(4096);
    for n in 0..40 {
        trail.append(call(n)).expect("append");
    }
    drop(trail);
    let files = crate::files(dir.path()).expect("files");
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        assert!(
            std::fs::metadata(file).expect("size").len() <= 4096,
            "{file:?}"
        );
    }
    let report = crate::verify::verify_dir(dir.path(), None).expect("verify");
    assert_eq!(report.records, 41, "{report:?}");
    assert!(report.first_bad.is_none(), "{report:?}");
    // Reopened right after a rotation (the new file empty), the chain goes on.
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("reopen");
    trail.set_rotation(4096);
    drop(trail);
    std::fs::write(dir.path().join(FILE), b"").expect("empty the current file");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default())
        .expect("reopen after a rotation");
    trail.append(call(1)).expect("append");
    drop(trail);
    let report = crate::verify::verify_dir(dir.path(), None).expect("verify");
    assert!(report.first_bad.is_none(), "{report:?}");
    let files = crate::files(dir.path()).expect("files");
    // A rotated file removed from the middle is named.
    std::fs::remove_file(&files[1]).expect("remove");
    let report = crate::verify::verify_dir(dir.path(), None).expect("verify");
    assert!(report.first_bad.is_some_and(|b| b.why.contains("missing")));
}

#[test]
fn exported_records_arrive_whole_and_a_collector_can_check_their_chain() {
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").expect("collector");
    collector
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), OnFailure::Refuse, Checkpoints::default()).expect("open");
    trail
        .set_export(collector.local_addr().expect("address"))
        .expect("export");
    for n in 0..5 {
        trail.append(call(n)).expect("append");
    }
    let mut lines = String::new();
    let mut buffer = [0u8; 65536];
    for _ in 0..5 {
        let n = collector.recv(&mut buffer).expect("a message");
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        assert!(message.starts_with("<110>1 "), "{message}");
        let json = &message[message.find('{').expect("the record")..];
        lines.push_str(json);
        lines.push('\n');
    }
    // What the collector got is the file's records after `opened`, chained as they are.
    let file = std::fs::read_to_string(dir.path().join(FILE)).expect("file");
    let in_file: Vec<&str> = file.lines().skip(1).collect();
    assert_eq!(lines.lines().collect::<Vec<_>>(), in_file);
}
