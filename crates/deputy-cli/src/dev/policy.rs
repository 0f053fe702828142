//! The dev mesh's policy: the shipped Rego modules as they are, with data for alpha and beta.

use std::path::{Path, PathBuf};

/// The shipped policy's modules (tests stay out: deputyd does not serve them).
const MODULES: [(&str, &str); 7] = [
    (
        "main.rego",
        include_str!("../../../../policies/authz/main.rego"),
    ),
    (
        "services.rego",
        include_str!("../../../../policies/authz/services.rego"),
    ),
    (
        "depth.rego",
        include_str!("../../../../policies/authz/depth.rego"),
    ),
    (
        "support.rego",
        include_str!("../../../../policies/authz/support.rego"),
    ),
    (
        "approval.rego",
        include_str!("../../../../policies/authz/approval.rego"),
    ),
    (
        "mcp.rego",
        include_str!("../../../../policies/authz/mcp.rego"),
    ),
    (
        "a2a.rego",
        include_str!("../../../../policies/authz/a2a.rego"),
    ),
];

/// Writes the policy under `dir/policy` (data.json only if absent: an edited one is kept) and
/// returns its directory.
pub(crate) fn write(dir: &Path, trust_domain: &str) -> std::io::Result<PathBuf> {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy)?;
    for (name, text) in MODULES {
        std::fs::write(policy.join(name), text)?;
    }
    let data = policy.join("data.json");
    if !data.exists() {
        let id = |agent: &str| format!("spiffe://{trust_domain}/agent/{agent}");
        let document = serde_json::json!({
            "services": {
                "alpha": {"callers": [id("beta")]},
                "beta": {"callers": [id("alpha")]},
            },
            "originate": {id("alpha"): ["user:*"], id("beta"): ["user:*"]},
            "limits": {"max_depth": 8, "max_depth_by_service": {}},
            "business_hours": {
                "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
                "start": 9, "end": 18,
            },
            "customers": {},
            "mcp": {
                "tools": {id("alpha"): ["search_tickets"], id("beta"): ["search_tickets"]},
                "irreversible_tools": ["refund"],
                "customer_tools": [],
            },
            "a2a": {"methods": {}, "skills": {}},
        });
        let text = serde_json::to_string_pretty(&document).map_err(std::io::Error::other)?;
        std::fs::write(&data, text + "\n")?;
    }
    Ok(policy)
}
