//! The decision: what the entrypoint returns, read strictly. Anything but a well-formed object
//! with `allow: true` is a denial, and the denial says why.

use serde::Serialize;

/// The rule every policy must define.
pub const ENTRYPOINT: &str = "deputy/authz/decision";

/// The entrypoint as a Rego reference.
pub const ENTRYPOINT_REF: &str = "data.deputy.authz.decision";

/// The keys of a decision object; any other key denies.
pub const DECISION_KEYS: &[&str] = &["allow", "reasons", "approval", "scope"];

/// An approval obligation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Whether a human must approve first.
    pub required: bool,
    /// Why, shown to the operator and the agent.
    pub reason: String,
}

/// A policy's decision, as enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the call may proceed (after obligations).
    pub allow: bool,
    /// Why, for operators and agents.
    pub reasons: Vec<String>,
    /// Approval obligation, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// A narrower scope for the next link, if the policy sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
}

impl Decision {
    /// Whether the call is allowed only once a human approves it (an allowed decision with
    /// `approval.required`). The data path enforces it: the call is held until approved.
    pub fn needs_approval(&self) -> bool {
        self.allow && self.approval.as_ref().is_some_and(|a| a.required)
    }

    /// A denial with one reason.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![reason.into()],
            approval: None,
            scope: None,
        }
    }

    /// Reads the entrypoint's value (`None`: undefined). Strict: a result that is not an object,
    /// lacks a boolean `allow`, or has malformed obligations is a denial naming the problem.
    pub fn from_result(value: Option<&serde_json::Value>) -> Self {
        let Some(value) = value else {
            return Self::deny(format!(
                "the policy's {ENTRYPOINT_REF} is undefined for this input; a policy must always \
                 return an object (use a default rule)"
            ));
        };
        let Some(object) = value.as_object() else {
            return Self::deny(format!(
                "the policy's {ENTRYPOINT_REF} returned {}, not an object with `allow`",
                kind_of(value)
            ));
        };
        // A key Deputy does not read is most likely a misspelled obligation (`aproval`): left
        // unread, the call would go through without what the policy asked for.
        if let Some(unknown) = object.keys().find(|k| !DECISION_KEYS.contains(&k.as_str())) {
            return Self::deny(format!(
                "the policy's decision has the key `{unknown}`, which Deputy does not read (it \
                 reads {}); a misspelled obligation would be dropped, so the call is denied",
                DECISION_KEYS.join(", ")
            ));
        }
        let Some(allow) = object.get("allow").and_then(serde_json::Value::as_bool) else {
            return Self::deny(format!(
                "the policy's decision has no boolean `allow` (got {}); denied",
                object.get("allow").map_or("nothing", kind_of)
            ));
        };
        let reasons = match object.get("reasons") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(other) => {
                return Self::deny(format!(
                    "the policy's `reasons` is {}, not a list of strings; denied",
                    kind_of(other)
                ));
            }
        };
        let approval = match object.get("approval") {
            None | Some(serde_json::Value::Null) => None,
            Some(a)
                if a.as_object()
                    .is_some_and(|a| a.keys().any(|k| k != "required" && k != "reason")) =>
            {
                return Self::deny(
                    "the policy's `approval` has a key other than `required` and `reason`; \
                     denied"
                        .to_owned(),
                );
            }
            Some(a) => match (a.get("required").and_then(|r| r.as_bool()), a.get("reason")) {
                (Some(required), reason) => Some(Approval {
                    required,
                    reason: reason
                        .and_then(|r| r.as_str())
                        .unwrap_or("approval required by policy")
                        .to_owned(),
                }),
                (None, _) => {
                    return Self::deny(
                        "the policy's `approval` has no boolean `required`; denied".to_owned(),
                    );
                }
            },
        };
        let scope = match object.get("scope") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => {
                match items
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect()
                {
                    Some(scopes) => Some(scopes),
                    None => {
                        return Self::deny(
                            "the policy's `scope` holds a non-string; denied".to_owned(),
                        );
                    }
                }
            }
            Some(other) => {
                return Self::deny(format!(
                    "the policy's `scope` is {}, not a list of scopes; denied",
                    kind_of(other)
                ));
            }
        };
        let mut decision = Self {
            allow,
            reasons,
            approval,
            scope,
        };
        if !decision.allow && decision.reasons.is_empty() {
            decision.reasons.push("denied by policy".to_owned());
        }
        decision
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(value: serde_json::Value) -> Decision {
        Decision::from_result(Some(&value))
    }

    #[test]
    fn only_a_well_formed_allow_allows() {
        let d = read(json!({"allow": true, "reasons": ["team match"]}));
        assert!(d.allow);
        assert_eq!(d.reasons, ["team match"]);
        for bad in [
            json!(true),
            json!("allow"),
            json!({"allow": "true"}),
            json!({"reasons": ["no allow key"]}),
            json!({"allow": true, "reasons": 3}),
            json!({"allow": true, "scope": "tickets:read"}),
            json!({"allow": true, "scope": [1]}),
            json!({"allow": true, "approval": {"reason": "x"}}),
            json!({"allow": true, "aproval": {"required": true, "reason": "x"}}),
            json!({"allow": true, "approval": {"required": false, "reasno": "x"}}),
            json!({"allow": true, "scopes": ["tickets:read"]}),
        ] {
            let d = read(bad.clone());
            assert!(!d.allow, "{bad} must deny");
            assert!(!d.reasons.is_empty(), "{bad} must say why");
        }
        let undefined = Decision::from_result(None);
        assert!(!undefined.allow);
        assert!(undefined.reasons[0].contains("undefined"));
    }

    #[test]
    fn an_approval_obligation_is_carried_with_its_reason() {
        let d = read(json!({
            "allow": true,
            "approval": {"required": true, "reason": "payments over 100 EUR"}
        }));
        assert!(d.allow && d.needs_approval());
        assert_eq!(
            d.approval.map(|a| a.reason),
            Some("payments over 100 EUR".to_owned())
        );
        let d = read(json!({"allow": true, "approval": {"required": false}}));
        assert!(d.allow && !d.needs_approval());
        // A denial needs no approval: nothing would make it pass.
        let d = read(json!({"allow": false, "approval": {"required": true, "reason": "x"}}));
        assert!(!d.allow && !d.needs_approval());
    }

    #[test]
    fn a_narrower_scope_is_carried() {
        let d = read(json!({"allow": true, "scope": ["tickets:read"]}));
        assert_eq!(d.scope, Some(vec!["tickets:read".to_owned()]));
        let d = read(json!({"allow": false}));
        assert_eq!(d.reasons, ["denied by policy"]);
    }
}
