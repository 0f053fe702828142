//! One crafted chain per verification rule, each failing with its own error.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Agent, Domain, anchors, claims, grant, now, verifier};
use deputy_delegation::{ChainError, LinkSigner, VerifyOptions, extend, link_hash, originate};

struct World {
    example: Domain,
    user_agent: Agent,
    a: Agent,
    b: Agent,
    c: Agent,
}

fn world() -> World {
    let example = Domain::new("example.org");
    World {
        user_agent: example.agent("frontdoor"),
        a: example.agent("a"),
        b: example.agent("b"),
        c: example.agent("c"),
        example,
    }
}

/// frontdoor -> a -> b: a valid two-link chain that b's deputyd received from a.
fn two_links(w: &World) -> String {
    let first = originate(
        &w.user_agent.signer(),
        "user:alice@example.org",
        "task-1",
        &grant(&w.a, &["tickets:*"], Some(10), 600),
        now(),
    )
    .expect("originate");
    let v = verifier();
    let at_a = v
        .verify(
            &first,
            &anchors(&[&w.example]),
            &w.user_agent.id,
            &w.a.id,
            now(),
        )
        .expect("a accepts");
    extend(
        &at_a,
        &w.a.signer(),
        &grant(&w.b, &["tickets:read"], Some(5), 300),
        Some(10),
        now(),
    )
    .expect("extend")
}

fn verify(
    w: &World,
    header: &str,
    peer: &Agent,
    local: &Agent,
) -> Result<deputy_delegation::VerifiedChain, ChainError> {
    verifier().verify(header, &anchors(&[&w.example]), &peer.id, &local.id, now())
}

fn code(result: Result<deputy_delegation::VerifiedChain, ChainError>) -> &'static str {
    result.expect_err("must be refused").code()
}

#[test]
fn a_valid_chain_verifies_and_names_every_actor() {
    let w = world();
    let chain = verify(&w, &two_links(&w), &w.a, &w.b).expect("valid");
    assert_eq!(chain.principal(), "user:alice@example.org");
    assert_eq!(chain.task(), "task-1");
    assert_eq!(chain.last().scope, ["tickets:read"]);
    assert_eq!(chain.last().budget.map(|b| b.calls), Some(5));
    assert_eq!(
        chain.actors(),
        [
            w.user_agent.id.to_string(),
            w.a.id.to_string(),
            w.b.id.to_string()
        ]
    );
}

#[test]
fn a_tampered_claim_breaks_the_signature() {
    let w = world();
    let header = two_links(&w);
    let links: Vec<&str> = header.split(", ").collect();
    let parts: Vec<&str> = links[1].split('.').collect();
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("payload");
    let widened = String::from_utf8(payload)
        .expect("json")
        .replace("tickets:read", "tickets:*");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(widened),
        parts[2]
    );
    let result = verify(&w, &format!("{}, {forged}", links[0]), &w.a, &w.b);
    assert_eq!(code(result), "bad_signature");
}

#[test]
fn swapped_or_removed_links_break_prev() {
    let w = world();
    let header = two_links(&w);
    let links: Vec<&str> = header.split(", ").collect();
    assert_eq!(
        code(verify(
            &w,
            &format!("{}, {}", links[1], links[0]),
            &w.a,
            &w.b
        )),
        "broken_prev"
    );
    // Removing the middle link of a three-link chain.
    let at_b = verify(&w, &header, &w.a, &w.b).expect("valid");
    let three = extend(
        &at_b,
        &w.b.signer(),
        &grant(&w.c, &["tickets:read"], None, 60),
        Some(5),
        now(),
    )
    .expect("extend");
    let three: Vec<&str> = three.split(", ").collect();
    assert_eq!(
        code(verify(
            &w,
            &format!("{}, {}", three[0], three[2]),
            &w.b,
            &w.c
        )),
        "broken_prev"
    );
}

#[test]
fn a_link_signed_by_a_key_that_is_not_its_x5c_leafs_is_refused() {
    let w = world();
    let impostor = LinkSigner::new(&w.user_agent.chain, &w.c.key).expect("signer");
    let first = originate(
        &impostor,
        "user:alice@example.org",
        "t",
        &grant(&w.a, &["x"], None, 60),
        now(),
    )
    .expect("signed");
    assert_eq!(
        code(verify(&w, &first, &w.user_agent, &w.a)),
        "bad_signature"
    );
}

#[test]
fn a_foreign_trust_domain_without_a_federated_bundle_is_refused() {
    let w = world();
    let partner = Domain::new("partner.org");
    let outsider = partner.agent("x");
    let first = originate(
        &outsider.signer(),
        "user:bob@partner.org",
        "t",
        &grant(&w.a, &["x"], None, 60),
        now(),
    )
    .expect("signed");
    let err = verify(&w, &first, &outsider, &w.a).expect_err("unknown trust domain");
    assert_eq!(err.code(), "untrusted_signer");
    assert!(err.to_string().contains("partner.org"), "{err}");
    // With the partner's bundle federated, the same link verifies.
    verifier()
        .verify(
            &first,
            &anchors(&[&w.example, &partner]),
            &outsider.id,
            &w.a.id,
            now(),
        )
        .expect("federated");
}

#[test]
fn an_expired_link_is_refused_even_when_its_signature_is_cached() {
    let w = world();
    let header = two_links(&w);
    let v = verifier();
    let trust = anchors(&[&w.example]);
    v.verify(&header, &trust, &w.a.id, &w.b.id, now())
        .expect("valid now");
    let later = now() + Duration::from_secs(3600);
    let err = v
        .verify(&header, &trust, &w.a.id, &w.b.id, later)
        .expect_err("expired later");
    assert_eq!(err.code(), "expired");
}

#[test]
fn a_cycle_is_refused() {
    let w = world();
    let l1 =
        w.a.signer()
            .sign(&claims(&w.a, &w.b, &["x"], 60, None))
            .expect("l1");
    let l2 =
        w.b.signer()
            .sign(&claims(&w.b, &w.a, &["x"], 60, Some(link_hash(&l1))))
            .expect("l2");
    let l3 =
        w.a.signer()
            .sign(&claims(&w.a, &w.c, &["x"], 60, Some(link_hash(&l2))))
            .expect("l3");
    assert_eq!(
        code(verify(&w, &format!("{l1}, {l2}, {l3}"), &w.a, &w.c)),
        "cycle"
    );
}

#[test]
fn too_deep_and_too_large_chains_are_refused() {
    let w = world();
    let header = two_links(&w);
    let shallow = deputy_delegation::ChainVerifier::new(VerifyOptions {
        max_depth: 1,
        ..VerifyOptions::default()
    });
    let err = shallow
        .verify(&header, &anchors(&[&w.example]), &w.a.id, &w.b.id, now())
        .expect_err("too deep");
    assert_eq!(err.code(), "too_deep");
    let huge = format!("{header}, {}", "x".repeat(17 * 1024));
    assert_eq!(code(verify(&w, &huge, &w.a, &w.b)), "header_too_large");
}

#[test]
fn a_captured_chain_replayed_by_another_agent_is_refused() {
    let w = world();
    let header = two_links(&w);
    // c captured the chain a sent to b, and presents it on its own connection to b.
    assert_eq!(code(verify(&w, &header, &w.c, &w.b)), "peer_mismatch");
    // Or presents it to another agent.
    assert_eq!(code(verify(&w, &header, &w.a, &w.c)), "not_for_this_agent");
}

#[test]
fn every_narrowing_rule_is_enforced_on_hand_made_links() {
    let w = world();
    let l1 =
        w.a.signer()
            .sign(&claims(&w.a, &w.b, &["tickets:read"], 60, None))
            .expect("l1");
    let prev = Some(link_hash(&l1));
    let sign = |mut c: deputy_delegation::LinkClaims,
                edit: &dyn Fn(&mut deputy_delegation::LinkClaims)| {
        edit(&mut c);
        w.b.signer().sign(&c).expect("sign")
    };
    let base = || claims(&w.b, &w.c, &["tickets:read"], 30, prev.clone());
    let cases: Vec<(&str, String)> = vec![
        (
            "scope_escalation",
            sign(base(), &|c| c.scope = vec!["tickets:write".into()]),
        ),
        ("expiry_widened", sign(base(), &|c| c.exp += 3600)),
        (
            "principal_changed",
            sign(base(), &|c| c.sub = "user:mallory".into()),
        ),
        ("task_changed", sign(base(), &|c| c.task = "other".into())),
        ("issued_in_future", sign(base(), &|c| c.iat += 3600)),
        (
            "issuer_mismatch",
            sign(base(), &|c| c.iss = w.a.id.to_string()),
        ),
    ];
    for (expected, l2) in cases {
        let result = verify(&w, &format!("{l1}, {l2}"), &w.b, &w.c);
        assert_eq!(code(result), expected);
    }
    // Budgets: a limited parent cannot be followed by a larger or unlimited budget.
    let mut limited = claims(&w.a, &w.b, &["tickets:read"], 60, None);
    limited.budget = Some(deputy_delegation::Budget { calls: 3 });
    let l1 = w.a.signer().sign(&limited).expect("l1");
    let mut more = claims(&w.b, &w.c, &["tickets:read"], 30, Some(link_hash(&l1)));
    more.budget = Some(deputy_delegation::Budget { calls: 4 });
    let l2 = w.b.signer().sign(&more).expect("l2");
    assert_eq!(
        code(verify(&w, &format!("{l1}, {l2}"), &w.b, &w.c)),
        "budget_widened"
    );
    // A link issued by someone other than the previous link's audience.
    let l1 =
        w.a.signer()
            .sign(&claims(&w.a, &w.b, &["x"], 60, None))
            .expect("l1");
    let l2 =
        w.c.signer()
            .sign(&claims(
                &w.c,
                &w.user_agent,
                &["x"],
                30,
                Some(link_hash(&l1)),
            ))
            .expect("l2");
    assert_eq!(
        code(verify(&w, &format!("{l1}, {l2}"), &w.c, &w.user_agent)),
        "audience_mismatch"
    );
}

#[test]
fn extension_refuses_to_widen_instead_of_trimming() {
    let w = world();
    let at_b = verify(&w, &two_links(&w), &w.a, &w.b).expect("valid");
    let err = extend(
        &at_b,
        &w.b.signer(),
        &grant(&w.c, &["tickets:write"], None, 60),
        Some(5),
        now(),
    )
    .expect_err("escalation");
    assert!(
        err.to_string().contains("scope escalation: tickets:write"),
        "{err}"
    );
    let err = extend(
        &at_b,
        &w.b.signer(),
        &grant(&w.c, &["tickets:read"], Some(6), 60),
        Some(5),
        now(),
    )
    .expect_err("budget");
    assert!(err.to_string().contains("budget escalation"), "{err}");
    let err = extend(
        &at_b,
        &w.c.signer(),
        &grant(&w.user_agent, &["tickets:read"], None, 60),
        Some(5),
        now(),
    )
    .expect_err("not the delegate");
    assert!(err.to_string().contains("cannot extend"), "{err}");
}
