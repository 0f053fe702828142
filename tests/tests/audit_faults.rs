//! The audit trail when things go wrong: deputyd killed (`kill -9`) during load keeps every
//! call whose answer was sent; a full disk (a small tmpfs) refuses calls until the trail can be
//! written again, or, if the operator chose, serves on and counts exactly what was lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::{binary, run};
use http::StatusCode;

/// alpha's call to beta: its status and request id, once its answer was read whole.
async fn call(alpha: &str) -> Option<(StatusCode, String)> {
    let response = client::send(
        alpha,
        Protocol::Http1,
        client::get("beta", "/", Protocol::Http1),
    )
    .await
    .ok()?;
    let status = response.status();
    let id = response
        .headers()
        .get("deputy-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    use http_body_util::BodyExt as _;
    response.into_body().collect().await.ok()?;
    Some((status, id))
}

fn trail_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("audit.jsonl")).expect("the trail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_during_load_every_call_whose_answer_was_sent_is_in_the_trail() {
    let mut mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let answered = Arc::new(Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (alpha, answered) = (alpha.clone(), answered.clone());
            tokio::spawn(async move {
                while let Some((status, id)) = call(&alpha).await {
                    assert_eq!(status, StatusCode::OK);
                    answered.lock().expect("lock").push(id);
                }
            })
        })
        .collect();
    // Under load (at least 200 calls answered), node1 is killed.
    for _ in 0..600 {
        if answered.lock().expect("lock").len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.node1.process.signal(nix::sys::signal::Signal::SIGKILL);
    mesh.node1.process.wait(Duration::from_secs(10));
    for caller in callers {
        caller.await.expect("caller");
    }
    let answered = answered.lock().expect("lock").clone();
    assert!(
        answered.len() >= 200,
        "only {} calls answered",
        answered.len()
    );

    // Started again, node1 continues its trail; every answered call is in it.
    mesh.node1 = Node::start(&mesh.dir.path().join("node1.toml"));
    mesh.node1.wait_ready();
    let trail = mesh.dir.path().join("state-node1/audit");
    let text = trail_text(&trail);
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !text.contains(&format!("\"request_id\":\"{id}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered calls are not in the trail: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert_eq!(
        text.matches("\"type\":\"opened\"").count(),
        2,
        "opened twice"
    );
    let (status, out) = run(Command::new(binary("deputy"))
        .args(["audit", "verify"])
        .arg(&trail));
    assert!(status.success() && out.starts_with("whole"), "{out}");
}

/// A tmpfs of 256 KiB mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).expect("mount point");
        let (status, out) = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&at));
        assert!(
            status.success(),
            "mount a tmpfs (the suite runs as root): {out}"
        );
        Self(at)
    }

    /// Fills it: nothing more can be allocated.
    fn fill(&self) {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = [0u8; 512];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// A mesh whose node1 writes its trail on a small disk, with `on_failure`.
fn mesh_on_small_disk(on_failure: &str) -> (Mesh, SmallDisk, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(dir.path().join("disk"));
    let trail = disk.0.join("trail");
    let section = format!(
        "[audit]\ndir = \"{}\"\non_failure = \"{on_failure}\"\n",
        trail.display()
    );
    let mesh = Mesh::start_configured("1h", None, (&section, ""));
    (mesh, disk, trail, dir)
}

/// Calls until `until` says stop (at most 400 calls): their statuses.
async fn calls_until(alpha: &str, until: impl Fn(StatusCode) -> bool) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for _ in 0..400 {
        let (status, _) = call(alpha).await.expect("an answer");
        statuses.push(status);
        if until(status) {
            break;
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_calls_until_the_trail_can_be_written_and_counts_what_was_lost() {
    let (mesh, disk, trail, _dir) = mesh_on_small_disk("refuse");
    let alpha = mesh.node1.outbound_of("alpha");
    assert_eq!(call(&alpha).await.expect("call").0, StatusCode::OK);
    disk.fill();
    // The first call whose record does not fit is answered (it happened) and lost; from then
    // on calls are refused until the trail can be written.
    let statuses = calls_until(&alpha, |s| s == StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let response = client::send(
        &alpha,
        Protocol::Http1,
        client::get("beta", "/", Protocol::Http1),
    )
    .await
    .expect("call");
    client::expect_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit-unavailable",
        "cannot write its audit trail",
    )
    .await;
    // Freed, the trail is written again (tried at most once a second) and says how many were
    // lost: the call that did not fit, and the records of the two refusals while it was full.
    disk.free();
    let after = calls_until(&alpha, |s| s == StatusCode::OK).await;
    assert_eq!(after.last(), Some(&StatusCode::OK), "{after:?}");
    let text = trail_text(&trail);
    let opened = text
        .lines()
        .rfind(|l| l.contains("\"type\":\"opened\""))
        .expect("an opened record");
    assert!(opened.contains("\"lost\":3"), "{opened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_in_serve_mode_keeps_serving_and_counts_each_record_lost() {
    let (mesh, disk, trail, _dir) = mesh_on_small_disk("serve");
    let alpha = mesh.node1.outbound_of("alpha");
    disk.fill();
    // Enough calls that the last page's slack is used up: every one answered.
    for _ in 0..40 {
        assert_eq!(call(&alpha).await.expect("call").0, StatusCode::OK);
    }
    let lost = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("deputy_audit_records_lost_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let counted = lost(&mesh.node1.metrics());
    assert!(counted > 0, "nothing counted lost on a full disk");
    disk.free();
    assert_eq!(call(&alpha).await.expect("call").0, StatusCode::OK);
    let text = trail_text(&trail);
    let calls = text.matches("\"type\":\"call\"").count() as u64;
    assert_eq!(
        calls + counted,
        41,
        "every call is either recorded or counted lost"
    );
    assert!(
        text.contains(&format!("\"lost\":{counted}")),
        "the trail says how many were lost: {text}"
    );
}
