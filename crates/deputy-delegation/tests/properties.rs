//! No sequence of extensions widens scope, expiry or budget, and every chain the extension API
//! makes verifies.

mod common;

use std::time::Duration;

use common::{Agent, Domain, anchors, now, verifier};
use deputy_delegation::{Grant, extend, originate};
use proptest::prelude::*;

const SCOPES: [&str; 6] = [
    "tickets:read",
    "tickets:write",
    "tickets:*",
    "users:read",
    "*:read",
    "users:*",
];

#[derive(Debug, Clone)]
struct Step {
    scopes: Option<Vec<usize>>,
    budget: Option<u64>,
    ttl: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::option::of(proptest::collection::vec(0..SCOPES.len(), 1..3)),
        proptest::option::of(0u64..20),
        1u64..3600,
    )
        .prop_map(|(scopes, budget, ttl)| Step {
            scopes,
            budget,
            ttl,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn extensions_never_widen(first in step(), steps in proptest::collection::vec(step(), 1..6)) {
        let domain = Domain::new("example.org");
        let agents: Vec<Agent> = (0..8).map(|i| domain.agent(&format!("a{i}"))).collect();
        let trust = anchors(&[&domain]);
        let v = verifier();
        let to_grant = |s: &Step, to: &Agent| Grant {
            delegate: to.id.clone(),
            scopes: s.scopes.as_ref().map(|i| i.iter().map(|&i| SCOPES[i].to_owned()).collect()),
            budget_calls: s.budget,
            ttl: Duration::from_secs(s.ttl),
        };
        let mut first_grant = to_grant(&first, &agents[1]);
        first_grant.scopes.get_or_insert_with(|| vec!["tickets:*".into()]);
        let header = originate(&agents[0].signer(), "user:alice", "t", &first_grant, now()).expect("originate");
        let mut chain = v.verify(&header, &trust, &agents[0].id, &agents[1].id, now()).expect("verifies");
        for (i, s) in steps.iter().enumerate() {
            let (me, next) = (&agents[i + 1], &agents[i + 2]);
            let parent = chain.last().clone();
            match extend(&chain, &me.signer(), &to_grant(s, next), None, now()) {
                Ok(header) => {
                    chain = v.verify(&header, &trust, &me.id, &next.id, now()).expect("an extension verifies");
                    let child = chain.last();
                    for scope in &child.scope {
                        prop_assert!(parent.scope.iter().any(|p| deputy_delegation::scope::covers(p, scope)));
                    }
                    prop_assert!(child.exp <= parent.exp);
                    if let Some(limit) = parent.budget {
                        prop_assert!(child.budget.is_some_and(|b| b.calls <= limit.calls));
                    }
                }
                Err(_) => {
                    // Refused: the request asked for more than the parent holds.
                    let asked_wider = s.scopes.as_ref().is_some_and(|i| {
                        i.iter().any(|&i| !parent.scope.iter().any(|p| deputy_delegation::scope::covers(p, SCOPES[i])))
                    });
                    let asked_more = matches!((parent.budget, s.budget), (Some(l), Some(r)) if r > l.calls);
                    prop_assert!(asked_wider || asked_more, "refused without a reason: {s:?} under {parent:?}");
                    break;
                }
            }
        }
    }
}
