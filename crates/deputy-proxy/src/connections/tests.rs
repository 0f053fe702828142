//! The registry against real certificates: what it lists, what it drains and why.

use std::sync::Arc;
use std::time::Duration;

use deputy_delegation::testing::TestDomain;
use rustls_pki_types::CertificateDer;
use spiffe::X509BundleSet;
use tokio::sync::watch;

use super::*;

fn bundles_of(domain: &TestDomain) -> Arc<X509BundleSet> {
    let mut set = X509BundleSet::new();
    set.add_bundle(domain.bundle());
    Arc::new(set)
}

fn inbound_from(domain: &TestDomain, agent: &str) -> Opening {
    Opening {
        side: Side::Inbound,
        agent: "beta".into(),
        remote: "127.0.0.1:4000".into(),
        local_expires: Some(SystemTime::now() + Duration::from_secs(3600)),
        peer_chain: domain
            .agent(agent)
            .chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        verified_under: None,
    }
}

fn registry(bundles: Bundles) -> Arc<Registry> {
    Arc::new(Registry::new(
        bundles,
        Duration::from_secs(3600),
        Duration::from_millis(200),
    ))
}

#[tokio::test]
async fn a_connection_is_listed_with_what_it_carries_until_it_ends() {
    let domain = TestDomain::new("example.org");
    let (_tx, bundles) = watch::channel(Some(bundles_of(&domain)));
    let registry = registry(bundles);
    let registration = registry.register(inbound_from(&domain, "alpha"));
    let handle = registration.handle();
    let in_flight = handle.request_started();
    handle.saw_task("task-1");
    handle.saw_task("task-1");
    handle.saw_task("task-2");

    let listed = registry.list();
    assert_eq!(listed.len(), 1);
    let info = &listed[0];
    assert_eq!(info.side, Side::Inbound);
    assert_eq!(info.agent, "beta");
    assert_eq!(
        info.peer.as_deref(),
        Some("spiffe://example.org/agent/alpha")
    );
    assert_eq!(info.tasks, ["task-1", "task-2"]);
    assert_eq!((info.requests, info.in_flight), (1, 1));
    assert!(
        info.peer_svid_expires_at
            .is_some_and(|t| t > unix_seconds(SystemTime::now()))
    );
    assert_eq!(info.draining, None);

    drop(in_flight);
    assert_eq!(registry.list()[0].in_flight, 0);
    drop(registration);
    assert!(registry.list().is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    assert_eq!(registry.wait_empty(deadline).await, 0);
}

#[tokio::test]
async fn removing_the_peers_ca_from_the_bundle_drains_its_connections_only() {
    let old = TestDomain::new("example.org");
    let other = TestDomain::new("other.org");
    let mut both = X509BundleSet::new();
    both.add_bundle(old.bundle());
    both.add_bundle(other.bundle());
    let (tx, bundles) = watch::channel(Some(Arc::new(both)));
    let registry = registry(bundles);
    let mut from_old = registry.register(inbound_from(&old, "alpha"));
    let from_other = registry.register(inbound_from(&other, "gamma"));
    registry.sweep();
    assert_eq!(from_old.draining(), None, "nothing changed yet");

    // example.org's CA rotated away: a new CA of the same trust domain, the old one gone.
    let rotated = TestDomain::new("example.org");
    let mut set = X509BundleSet::new();
    set.add_bundle(rotated.bundle());
    set.add_bundle(other.bundle());
    tx.send_replace(Some(Arc::new(set)));
    registry.sweep();
    let reason = tokio::time::timeout(Duration::from_secs(1), from_old.drained())
        .await
        .expect("drained");
    assert!(
        matches!(reason, DrainReason::PeerNoLongerTrusted(_)),
        "{reason:?}"
    );
    assert_eq!(
        from_other.draining(),
        None,
        "other.org's CA is still trusted"
    );
    let listed = registry.list();
    assert!(
        listed[0]
            .draining
            .as_deref()
            .is_some_and(|d| d.contains("trust bundle"))
    );
}

#[tokio::test]
async fn an_expired_local_svid_and_a_removed_agent_drain() {
    let domain = TestDomain::new("example.org");
    let (_tx, bundles) = watch::channel(Some(bundles_of(&domain)));
    let registry = registry(bundles);
    let expired = registry.register(Opening {
        local_expires: Some(SystemTime::now() - Duration::from_secs(1)),
        ..inbound_from(&domain, "alpha")
    });
    assert_eq!(
        expired.draining(),
        Some(DrainReason::LocalSvidExpired),
        "drained on arrival"
    );

    let plaintext = registry.register(Opening {
        side: Side::Outbound,
        agent: "alpha".into(),
        remote: "uid 1000".into(),
        local_expires: None,
        peer_chain: Vec::new(),
        verified_under: None,
    });
    let beta = registry.register(inbound_from(&domain, "gamma"));
    assert_eq!(registry.retire_agent("alpha"), 1);
    assert_eq!(plaintext.draining(), Some(DrainReason::AgentRemoved));
    assert_eq!(beta.draining(), None);
    assert_eq!(
        registry.drain_all(&DrainReason::ShuttingDown),
        1,
        "the others already drain"
    );
}

#[tokio::test]
async fn a_drained_connection_gets_its_grace_then_is_cut() {
    let domain = TestDomain::new("example.org");
    let (_tx, bundles) = watch::channel(Some(bundles_of(&domain)));
    let registry = registry(bundles);

    // A connection that finishes once told to shut down ends within the grace.
    let mut polite = registry.register(inbound_from(&domain, "alpha"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    registry.drain_all(&DrainReason::ShuttingDown);
    let ended = serve_until_drained(async { stop_rx.await.is_ok() }, &mut polite, None, |_| {
        stop_tx.take().map(|tx| tx.send(()));
    })
    .await;
    assert!(matches!(ended, serve::Ended::Finished(true)));

    // One that does not is closed when the grace runs out.
    let mut stubborn = registry.register(inbound_from(&domain, "alpha"));
    registry.drain_all(&DrainReason::ShuttingDown);
    let started = tokio::time::Instant::now();
    let ended =
        serve_until_drained(std::future::pending::<()>(), &mut stubborn, None, |_| {}).await;
    assert!(matches!(ended, serve::Ended::Cut));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn what_changed_during_the_handshake_is_checked_at_registration() {
    let old = TestDomain::new("example.org");
    let (tx, bundles) = watch::channel(Some(bundles_of(&old)));
    let registry = registry(bundles);
    // The handshake began under the old bundle; the CA rotated away before it registered.
    let began_under = registry.current_bundles();
    tx.send_replace(Some(bundles_of(&TestDomain::new("example.org"))));
    registry.sweep();
    let late = registry.register(Opening {
        verified_under: began_under,
        ..inbound_from(&old, "alpha")
    });
    assert!(
        matches!(late.draining(), Some(DrainReason::PeerNoLongerTrusted(_))),
        "{:?}",
        late.draining()
    );

    // An agent removed, or a stop begun, while a handshake was under way.
    let domain = TestDomain::new("example.org");
    let (_tx, bundles) = watch::channel(Some(bundles_of(&domain)));
    let fresh = super::tests::registry(bundles);
    fresh.retire_agent("beta");
    assert!(fresh.is_retired("beta"));
    let retired = fresh.register(inbound_from(&domain, "alpha"));
    assert_eq!(retired.draining(), Some(DrainReason::AgentRemoved));
    fresh.drain_all(&DrainReason::ShuttingDown);
    let after_stop = fresh.register(Opening {
        agent: "gamma".into(),
        ..inbound_from(&domain, "alpha")
    });
    assert_eq!(after_stop.draining(), Some(DrainReason::ShuttingDown));
}

#[test]
fn a_chain_that_does_not_parse_counts_as_expired() {
    let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
    assert_eq!(earliest_expiry(&garbage), Some(UNIX_EPOCH));
    assert_eq!(earliest_expiry(&[]), None);
}

#[test]
fn max_ages_are_spread_over_a_tenth() {
    let hour = Duration::from_secs(3600);
    let ages: Vec<Duration> = (1..200).map(|id| spread(hour, id)).collect();
    assert!(ages.iter().all(|a| *a <= hour && *a >= hour - hour / 10));
    let distinct: std::collections::HashSet<_> = ages.iter().collect();
    assert!(
        distinct.len() > 100,
        "spread, not all alike: {}",
        distinct.len()
    );
}
