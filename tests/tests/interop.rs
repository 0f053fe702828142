//! SPIFFE clients of other stacks against `deputy issuer`, each with its own default settings:
//! SPIRE's own CLI (`spire-agent api`), a go-spiffe program and py-spiffe (Python, on grpcio,
//! which sends the socket path as the HTTP/2 `:authority`). All built by scripts/peers.

use std::path::Path;
use std::process::Command;

use deputy_tests::peers::peer;
use deputy_tests::{IssuerProcess, binary, my_uid, run};

const CLIENT_ID: &str = "spiffe://example.org/interop/client";

/// An issuer in `dir` that registers this test process (by uid) with `x509_ttl`.
fn issuer(dir: &Path, x509_ttl: &str) -> IssuerProcess {
    std::fs::write(
        dir.join("entries.toml"),
        format!(
            "[[entry]]\nspiffe_id = \"{CLIENT_ID}\"\nselectors = [\"unix:uid:{}\"]\nx509_ttl = \"{x509_ttl}\"\n",
            my_uid()
        ),
    )
    .expect("entries");
    IssuerProcess::start(dir)
}

fn ok(command: &mut Command) -> String {
    let (status, output) = run(command);
    assert!(status.success(), "{command:?} failed:\n{output}");
    output
}

fn json(command: &mut Command) -> serde_json::Value {
    let output = ok(command);
    let line = output
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn spire_agent_api_commands_fetch_and_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = issuer(dir.path(), "1h");
    let socket = issuer.workload_socket();
    let written = dir.path().join("written");
    std::fs::create_dir(&written).expect("dir");

    let fetched = ok(Command::new(peer("spire-agent"))
        .args(["api", "fetch", "x509", "-socketPath"])
        .arg(&socket)
        .arg("-write")
        .arg(&written));
    assert!(
        fetched.contains(&format!("SPIFFE ID:\t\t{CLIENT_ID}")),
        "{fetched}"
    );
    // What SPIRE's CLI wrote is a valid X.509-SVID by Deputy's own inspection.
    let inspected = ok(Command::new(binary("deputy"))
        .args(["svid", "inspect"])
        .arg(written.join("svid.0.pem")));
    assert!(inspected.contains(CLIENT_ID), "{inspected}");
    assert!(written.join("svid.0.key").exists() && written.join("bundle.0.pem").exists());

    let jwt = ok(Command::new(peer("spire-agent"))
        .args(["api", "fetch", "jwt", "-audience", "db", "-socketPath"])
        .arg(&socket));
    let token = jwt
        .lines()
        .skip_while(|l| !l.starts_with("token("))
        .nth(1)
        .unwrap_or_else(|| panic!("a token in {jwt}"))
        .trim()
        .to_owned();
    assert!(jwt.contains(&format!("token({CLIENT_ID})")), "{jwt}");
    let valid = ok(Command::new(peer("spire-agent"))
        .args([
            "api",
            "validate",
            "jwt",
            "-audience",
            "db",
            "-svid",
            &token,
            "-socketPath",
        ])
        .arg(&socket));
    assert!(valid.contains("SVID is valid"), "{valid}");
    assert!(valid.contains(CLIENT_ID), "{valid}");
    let (status, refused) = run(Command::new(peer("spire-agent"))
        .args([
            "api",
            "validate",
            "jwt",
            "-audience",
            "other",
            "-svid",
            &token,
            "-socketPath",
        ])
        .arg(&socket));
    assert!(!status.success(), "{refused}");
    assert!(
        refused.contains("not \\\"other\\\"") || refused.contains("not \"other\""),
        "{refused}"
    );
}

#[test]
fn a_go_spiffe_program_fetches_validates_and_follows_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = issuer(dir.path(), "4s");
    let socket = format!("unix://{}", issuer.workload_socket().display());
    let client = || {
        let mut command = Command::new(peer("spiffe-go-client"));
        command.args(["-socket", &socket]);
        command
    };

    let x509 = json(client().arg("x509"));
    assert_eq!(x509["spiffe_id"], CLIENT_ID);
    assert_eq!(x509["verified"], true, "{x509}");
    assert_eq!(x509["authorities"], 1);

    let jwt = json(client().args(["jwt", "-audience", "db"]));
    assert_eq!(jwt["spiffe_id"], CLIENT_ID);
    assert_eq!(jwt["audience"], serde_json::json!(["db"]));
    assert_eq!(jwt["valid_offline"], true);
    assert_eq!(jwt["valid_by_api"], true);
    assert!(
        jwt["other_audience_refused"]
            .as_str()
            .expect("refused")
            .contains("audience"),
        "{jwt}"
    );
    assert!(
        jwt["tampered_refused"]
            .as_str()
            .expect("refused")
            .contains("InvalidArgument"),
        "{jwt}"
    );

    // Rotation is pushed on the open stream: two new SVIDs after the first, each verified.
    let watched = json(client().args(["-timeout", "60s", "watch", "-rotations", "2"]));
    let serials = watched["serials"].as_array().expect("serials");
    assert_eq!(serials.len(), 3, "{watched}");
    assert_eq!(watched["spiffe_id"], CLIENT_ID);
}

#[test]
fn py_spiffe_on_grpcio_fetches_and_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = issuer(dir.path(), "1h");
    let socket = format!("unix://{}", issuer.workload_socket().display());
    let client = || {
        let mut command = Command::new(peer("spiffe-python-client"));
        command.args(["--socket", &socket]);
        command
    };

    // grpcio names the socket path as :authority; before the issuer accepted that, this call
    // failed with RST_STREAM(PROTOCOL_ERROR).
    let x509 = json(client().arg("x509"));
    assert_eq!(x509["spiffe_id"], CLIENT_ID);
    assert_eq!(x509["uri_sans"], serde_json::json!([CLIENT_ID]));
    assert_eq!(x509["signed_by_bundle"], true, "{x509}");

    let jwt = json(client().args(["jwt", "--audience", "db"]));
    assert_eq!(jwt["spiffe_id"], CLIENT_ID);
    assert_eq!(jwt["validated_as"], CLIENT_ID);
    let refused = jwt["other_audience_refused"].as_str().expect("refused");
    assert!(refused.contains("not \"someone-else\""), "{jwt}");
}
