//! deputyd against a real SPIRE deployment (spire-server and one spire-agent per node, built by
//! scripts/peers), registered with the scripts in spire/: its own SVID from the Workload API,
//! each agent's from the Delegated Identity API, a call between two nodes on SPIRE-issued
//! SVIDs, rotation without a restart, a SPIRE agent that goes away and comes back, and a CA
//! rotated out of the bundle taking the connections made under it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Node, demo_agent};
use deputy_tests::peers::peer;
use deputy_tests::spire::{SpireAgent, SpireServer};
use deputy_tests::{Process, binary, eventually, http_get, identity_of, my_uid, run};

const TD: &str = "example.org";
/// A uid alpha's processes run as, besides the test's own (which is deputyd's too).
const AGENT_UID: u32 = 1001;

/// Two nodes on SPIRE: node1 fronts alpha (outbound), node2 fronts beta (a demo agent, inbound).
struct SpireMesh {
    server: SpireServer,
    agents: [SpireAgent; 2],
    node1: Node,
    node2: Node,
    _beta: Process,
    dir: tempfile::TempDir,
}

/// Runs one of the registration scripts in spire/ against `server`, as an operator would.
fn register(server: &SpireServer, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../spire")
        .join(script);
    let (status, output) = run(Command::new(path)
        .args(args)
        .arg("--socket-path")
        .arg(server.socket())
        .env("SPIRE_SERVER", peer("spire-server")));
    assert!(status.success(), "{script} {args:?} failed:\n{output}");
    output
}

fn identity_config(agent: &SpireAgent) -> String {
    format!(
        "trust_domain = \"{TD}\"\n[identity]\nworkload_api = \"unix://{}\"\n\
         delegated_identity_api = \"unix://{}\"\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nrequest = \"10s\"\n[limits]\n\
         drain_grace = \"1s\"\n[state]\ndir = \"{}\"\n",
        agent.workload_socket().display(),
        agent.admin_socket().display(),
        agent
            .workload_socket()
            .with_file_name("deputyd-state")
            .display()
    )
}

impl SpireMesh {
    /// Starts SPIRE, registers deputyd on both nodes and the two agents (alpha's SVIDs living
    /// `alpha_ttl`), then both deputyd processes, and waits until both are ready.
    fn start(alpha_ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = SpireServer::start(&dir.path().join("spire"), TD);
        let uid = my_uid().to_string();
        let agents = ["node1", "node2"].map(|node| {
            let deputyd = format!("spiffe://{TD}/deputyd/{node}");
            let output = register(
                &server,
                "register-deputyd.sh",
                &[
                    "--spiffe-id",
                    &deputyd,
                    "--uid",
                    &uid,
                    "--parent-id",
                    &server.node_id(node),
                ],
            );
            assert!(output.contains("authorized_delegates"), "{output}");
            SpireAgent::start(&server, node, &[&deputyd])
        });
        for (name, node, ttl) in [("alpha", "node1", alpha_ttl), ("beta", "node2", "1h")] {
            let output = register(
                &server,
                "register-agent.sh",
                &[
                    "--spiffe-id",
                    &format!("spiffe://{TD}/agent/{name}"),
                    "--agent",
                    name,
                    "--parent-id",
                    &server.node_id(node),
                    "--x509-ttl",
                    ttl,
                ],
            );
            assert!(output.contains(&format!("deputy:agent:{name}")), "{output}");
        }

        let (beta, beta_addr) = demo_agent("beta", None);
        let agent = |name: &str, extra: &str| {
            format!(
                "[[agent]]\nname = \"{name}\"\nspiffe_id = \"spiffe://{TD}/agent/{name}\"\n\
                 {extra}\n"
            )
        };
        let start_node = |name: &str, config: String| {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, config).expect("node config");
            Node::start(&path)
        };
        let node2 = start_node(
            "node2",
            format!(
                "{}[inbound]\nlisten = \"127.0.0.1:0\"\nallow_peers = [\"spiffe://{TD}/agent/alpha\"]\n{}",
                identity_config(&agents[1]),
                agent("beta", &format!("upstream = \"http://{beta_addr}\""))
            ),
        );
        let node2_inbound = node2.inbound.clone().expect("node2 inbound");
        let node1 = start_node(
            "node1",
            format!(
                "{}{}[[service]]\nname = \"beta\"\nspiffe_id = \"spiffe://{TD}/agent/beta\"\naddress = \"{node2_inbound}\"\n",
                identity_config(&agents[0]),
                agent(
                    "alpha",
                    &format!("outbound = \"127.0.0.1:0\"\nuids = [{uid}, {AGENT_UID}]")
                )
            ),
        );
        // Entries reach an agent within its sync interval (5 s by default).
        node1.wait_ready();
        node2.wait_ready();
        Self {
            server,
            agents,
            node1,
            node2,
            _beta: beta,
            dir,
        }
    }
}

/// Waits until every identity at `admin` satisfies `holds`; returns that status.
async fn until_identities(
    admin: &str,
    what: &'static str,
    timeout: Duration,
    holds: fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let admin = admin.to_owned();
    tokio::task::spawn_blocking(move || {
        eventually(what, timeout, || {
            let (_, body) = http_get(&admin, "/status")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            status["identities"]
                .as_array()?
                .iter()
                .all(holds)
                .then_some(status)
        })
    })
    .await
    .expect("status")
}

/// alpha calls beta through both nodes; returns the caller beta saw.
async fn call_beta(mesh: &SpireMesh) -> String {
    let outbound = mesh.node1.outbound_of("alpha");
    let response = client::send(
        &outbound,
        Protocol::Http1,
        client::get("beta", "/hello", Protocol::Http1),
    )
    .await
    .expect("the call is answered");
    let code = response.status();
    let body = client::json(response).await;
    assert_eq!(code, 200, "{body}");
    body["caller"].as_str().expect("caller").to_owned()
}

fn cli(args: &[&str], socket: &Path) -> String {
    let (status, output) = run(Command::new(binary("deputy"))
        .args(args)
        .arg("--socket")
        .arg(socket));
    assert!(status.success(), "deputy {args:?} failed:\n{output}");
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn deputyd_takes_every_identity_from_spire_and_carries_calls_on_them() {
    let mesh = tokio::task::spawn_blocking(|| SpireMesh::start("1h"))
        .await
        .expect("start");
    let public = mesh.agents[0].workload_socket();

    // deputyd's own SVID from the Workload API, each agent's from the Delegated Identity API.
    let own = identity_of(&mesh.node1.admin, "deputyd");
    assert_eq!(own["spiffe_id"], format!("spiffe://{TD}/deputyd/node1"));
    assert_eq!(own["state"], "available", "{own}");
    assert!(
        own["source"]
            .as_str()
            .expect("source")
            .contains(public.to_str().expect("utf-8"))
    );
    let alpha = identity_of(&mesh.node1.admin, "alpha");
    assert_eq!(alpha["state"], "available", "{alpha}");
    let source = alpha["source"].as_str().expect("source");
    assert!(source.starts_with("delegated_identity_api"), "{source}");
    assert!(
        source.contains(mesh.agents[0].admin_socket().to_str().expect("utf-8")),
        "{source}"
    );
    assert_eq!(
        identity_of(&mesh.node2.admin, "beta")["spiffe_id"],
        format!("spiffe://{TD}/agent/beta")
    );

    // The SVID deputyd holds is the one the SPIRE agent serves for its entry.
    let fetched = cli(&["svid", "fetch"], &public);
    assert!(
        fetched.contains(&format!("spiffe://{TD}/deputyd/node1")),
        "{fetched}"
    );
    let serial = own["serial"].as_str().expect("serial");
    assert!(
        fetched.contains(serial),
        "deputyd holds {serial}; SPIRE serves:\n{fetched}"
    );
    let spire_fetch = run(Command::new(peer("spire-agent"))
        .args(["api", "fetch", "x509", "-socketPath"])
        .arg(&public))
    .1;
    assert!(
        spire_fetch.contains(&format!("spiffe://{TD}/deputyd/node1")),
        "{spire_fetch}"
    );

    // JWT-SVIDs from the real agent, validated by it.
    let token = cli(&["jwt", "fetch", "--audience", "vault"], &public);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");
    let valid = cli(&["jwt", "validate", token, "--audience", "vault"], &public);
    assert!(
        valid.contains(&format!("spiffe://{TD}/deputyd/node1")),
        "{valid}"
    );
    let (status, refused) = run(Command::new(binary("deputy"))
        .args([
            "jwt",
            "validate",
            token,
            "--audience",
            "someone-else",
            "--socket",
        ])
        .arg(&public));
    assert!(!status.success(), "another audience is refused: {refused}");

    // A call between the nodes, each side presenting its SPIRE-issued SVID.
    assert_eq!(call_beta(&mesh).await, format!("spiffe://{TD}/agent/alpha"));
    let handshakes = mesh.node2.metrics();
    assert!(
        handshakes.contains("deputy_tls_handshakes_total{direction=\"inbound\"}"),
        "{handshakes}"
    );

    // alpha is registered under deputy:agent:alpha, which no workload attestor emits: the real
    // SPIRE agent serves it to no process, neither to deputyd's uid (given deputyd's entry
    // only) nor to a process of alpha's own uid, while deputyd holds alpha's SVID (above).
    assert!(!fetched.contains("agent/alpha"), "{fetched}");
    let entries = mesh.server.cli(&["entry", "show"]);
    assert!(entries.contains("deputy:agent:alpha"), "{entries}");
    let (status, refused) = run(deputy_tests::deputy_as(AGENT_UID, mesh.dir.path())
        .args(["svid", "fetch", "--socket"])
        .arg(&public));
    assert!(!status.success(), "uid {AGENT_UID} was served:\n{refused}");
    assert!(refused.contains("no identity issued"), "{refused}");
    assert!(!refused.contains("agent/alpha"), "{refused}");
    let (status, refused) =
        run(
            deputy_tests::program_as(AGENT_UID, mesh.dir.path(), &peer("spire-agent"))
                .args(["api", "fetch", "x509", "-socketPath"])
                .arg(&public),
        );
    assert!(!status.success(), "uid {AGENT_UID} was served:\n{refused}");
    assert!(refused.contains("no identity issued"), "{refused}");
    assert!(!refused.contains("agent/alpha"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_and_a_spire_agent_outage_need_no_restart() {
    let mut mesh = tokio::task::spawn_blocking(|| SpireMesh::start("20s"))
        .await
        .expect("start");
    // alpha's 20 s SVIDs rotate at half-life and reach deputyd while it runs.
    let first = identity_of(&mesh.node1.admin, "alpha")["serial"].clone();
    let rotated = tokio::task::spawn_blocking({
        let admin = mesh.node1.admin.clone();
        move || {
            eventually(
                "alpha's SVID rotates twice",
                Duration::from_secs(90),
                || {
                    let (_, body) = http_get(&admin, "/status")?;
                    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
                    let alpha = status["identities"]
                        .as_array()?
                        .iter()
                        .find(|i| i["name"] == "alpha")?
                        .clone();
                    (alpha["rotations"].as_u64()? >= 2).then_some(alpha)
                },
            )
        }
    })
    .await
    .expect("rotation");
    assert_ne!(rotated["serial"], first);
    assert_eq!(rotated["state"], "available");
    // The same deputyd process: it never exited, and it started once.
    assert!(mesh.node1.process.is_running(), "node1's deputyd exited");
    assert_eq!(
        mesh.node1
            .process
            .output
            .text()
            .matches("deputyd started")
            .count(),
        1,
        "{}",
        mesh.node1.process.output.text()
    );
    assert_eq!(call_beta(&mesh).await, format!("spiffe://{TD}/agent/alpha"));

    // node2's SPIRE agent goes away: deputyd keeps serving on the SVIDs it holds and says so.
    mesh.agents[1].stop();
    let unavailable = until_identities(
        &mesh.node2.admin,
        "node2 reports its source unavailable",
        Duration::from_secs(30),
        |i| {
            // The first error is the stream breaking; reconnecting then cannot connect.
            i["state"] == "source_unavailable"
                && i["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot connect"))
        },
    )
    .await;
    let beta = unavailable["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| i["name"] == "beta")
        .expect("beta")
        .clone();
    let error = beta["last_error"].as_str().expect("an error is reported");
    assert!(error.contains("is the SPIRE agent"), "{error}");
    assert!(
        beta["expires_in_seconds"].as_i64().expect("expiry") > 600,
        "{beta}"
    );
    assert_eq!(
        http_get(&mesh.node2.admin, "/readyz").expect("readyz").0,
        200
    );
    assert_eq!(call_beta(&mesh).await, format!("spiffe://{TD}/agent/alpha"));

    // It comes back: deputyd reconnects by itself.
    mesh.agents[1].restart();
    until_identities(
        &mesh.node2.admin,
        "node2 reconnects to its SPIRE agent",
        Duration::from_secs(60),
        |i| i["state"] == "available" && i["last_error"].is_null(),
    )
    .await;
    assert_eq!(call_beta(&mesh).await, format!("spiffe://{TD}/agent/alpha"));
}

#[test]
fn the_shipped_spire_configurations_are_valid() {
    let spire = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spire");
    for (program, file) in [
        ("spire-server", "server.conf"),
        ("spire-agent", "agent.conf"),
    ] {
        let (status, output) = run(Command::new(peer(program))
            .args(["validate", "-config"])
            .arg(spire.join(file)));
        assert!(status.success(), "{program} validate {file}:\n{output}");
        assert!(output.contains("is valid"), "{output}");
    }
}

/// The id of the server's X.509 authority in `state` (`active`, `prepared`, `old`).
fn authority(server: &SpireServer, state: &str) -> Option<String> {
    let shown = server.cli(&["localauthority", "x509", "show", "-output", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    let authority = &shown[state];
    authority["authority_id"]
        .as_str()
        .or_else(|| authority["authorityId"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_the_ca_it_was_admitted_under_leaves_the_bundle() {
    use http_body_util::BodyExt as _;
    let mesh = tokio::task::spawn_blocking(|| SpireMesh::start("1h"))
        .await
        .expect("start");
    let response = client::send(
        &mesh.node1.outbound_of("alpha"),
        Protocol::Http1,
        client::get("beta", "/events?count=1800", Protocol::Http1),
    )
    .await
    .expect("the stream opens");
    assert_eq!(response.status(), 200);
    // Events are counted as they arrive (100 ms apart), and the end is noted.
    let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reading = tokio::spawn({
        let events = events.clone();
        async move {
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) if frame.is_data() => {
                        events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    });

    // A new CA is prepared and put in force; the old one is tainted, so SPIRE re-issues every
    // SVID under the new one. The old CA is still in the bundle: the stream goes on.
    let server = &mesh.server;
    let old = authority(server, "active").expect("an active authority");
    server.cli(&["localauthority", "x509", "prepare"]);
    let new = authority(server, "prepared").expect("a prepared authority");
    server.cli(&["localauthority", "x509", "activate", "-authorityID", &new]);
    let before = identity_of(&mesh.node1.admin, "alpha")["serial"].clone();
    server.cli(&["localauthority", "x509", "taint", "-authorityID", &old]);
    let admin = mesh.node1.admin.clone();
    tokio::task::spawn_blocking(move || {
        eventually(
            "alpha re-issued under the new CA",
            Duration::from_secs(60),
            || (identity_of(&admin, "alpha")["serial"] != before).then_some(()),
        )
    })
    .await
    .expect("re-issued");
    let seen = events.load(std::sync::atomic::Ordering::Relaxed);
    let flowing = tokio::time::timeout(Duration::from_secs(10), async {
        while events.load(std::sync::atomic::Ordering::Relaxed) <= seen + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        flowing.is_ok() && !reading.is_finished(),
        "the stream still flows while the old CA is in the bundle"
    );

    // The old CA leaves the bundle: what was admitted under it is drained.
    server.cli(&["localauthority", "x509", "revoke", "-authorityID", &old]);
    let revoked = std::time::Instant::now();
    let clean = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the stream ends within a minute of the revocation")
        .expect("reader");
    assert!(!clean, "the stream was cut, not finished");
    let logs = mesh.node1.process.output.text() + &mesh.node2.process.output.text();
    assert!(
        logs.contains("no longer verifies against the trust bundle"),
        "drained for the bundle ({:?} after the revocation):\n{logs}",
        revoked.elapsed()
    );
    // A new call is made under the new CA.
    assert_eq!(call_beta(&mesh).await, format!("spiffe://{TD}/agent/alpha"));
}
