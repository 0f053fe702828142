//! `deputy agent add`: everything a new agent needs, written and checked in one command.
//!
//! It appends the agent's `[[agent]]` stanza to deputyd's configuration, and, when asked, its
//! registration entry to `deputy issuer`'s entries (or prints the `spire-server entry create`
//! for SPIRE), the services it may call and the principals it may act for to the policy's data,
//! and a Vault JWT role stub bound to its SPIFFE ID. Each file is validated as deputyd, the
//! issuer and the policy read it before anything is written: a mistake writes nothing. It ends
//! by saying what to run next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// Arguments of `deputy agent add`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The agent's name (its SPIFFE ID is spiffe://TRUST_DOMAIN/agent/NAME).
    name: String,
    /// The uid the agent's processes run as: deputyd's outbound listener admits only it.
    #[arg(long)]
    uid: u32,
    /// deputyd's configuration file, to add the agent to.
    #[arg(long, default_value = "/etc/deputy/deputyd.toml")]
    config: PathBuf,
    /// The agent's outbound listener: 127.0.0.1:PORT, or unix:///PATH.
    #[arg(long)]
    outbound: Option<String>,
    /// Where the agent serves calls from other agents (http://127.0.0.1:PORT), if it does.
    #[arg(long)]
    upstream: Option<String>,
    /// Add the agent's registration entry to this `deputy issuer` entries file.
    #[arg(long)]
    entries: Option<PathBuf>,
    /// Print the SPIRE registration command (spire/register-agent.sh) instead.
    #[arg(long, conflicts_with = "entries")]
    spire: bool,
    /// The policy's data.json: the agent is added as a caller of each `--calls` service and
    /// may start tasks for `--principals`.
    #[arg(long)]
    policy_data: Option<PathBuf>,
    /// A service the agent may call (repeat for more).
    #[arg(long = "calls", requires = "policy_data")]
    calls: Vec<String>,
    /// Principals the agent may start tasks for, such as `user:*` (repeat for more).
    #[arg(long = "principals", requires = "policy_data")]
    principals: Vec<String>,
    /// Write a Vault JWT role stub for the agent (NAME.json) into this directory.
    #[arg(long)]
    vault_role_dir: Option<PathBuf>,
}

/// What the command changed, for its report.
struct Plan {
    spiffe_id: String,
    writes: Vec<(PathBuf, String)>,
    done: Vec<String>,
    next: Vec<String>,
}

pub(crate) fn run(args: &AddArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(args)?;
    for (path, text) in &plan.writes {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "Added agent {} ({}), uid {}:",
        args.name, plan.spiffe_id, args.uid
    );
    for line in &plan.done {
        println!("  {line}");
    }
    println!("Next:");
    for (n, line) in plan.next.iter().enumerate() {
        println!("  {}. {line}", n + 1);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every file's new text, validated; nothing is written.
fn plan(args: &AddArgs) -> anyhow::Result<Plan> {
    let name = &args.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        bail!("agent name {name:?}: use lower-case letters, digits, '-' and '_'");
    }
    let text = std::fs::read_to_string(&args.config).with_context(|| {
        format!(
            "cannot read deputyd's configuration {}",
            args.config.display()
        )
    })?;
    let origin = args.config.display().to_string();
    let before = deputyd::Config::parse(&text, &origin)
        .with_context(|| format!("{origin} does not load as it is; fix it first"))?;
    let trust_domain = before.trust_domain.to_string();
    let spiffe_id = format!("spiffe://{trust_domain}/agent/{name}");
    if let Some(taken) = before
        .identity
        .agents
        .iter()
        .find(|a| a.name == *name || a.spiffe_id.to_string() == spiffe_id)
    {
        bail!(
            "{origin} already has agent {} ({}); choose another name",
            taken.name,
            taken.spiffe_id
        );
    }
    let outbound = args
        .outbound
        .clone()
        .unwrap_or_else(|| format!("unix:///run/deputy/{name}.sock"));
    // Written into TOML strings as they are: nothing that could end the string or the line.
    for (flag, value) in [
        ("--outbound", Some(&outbound)),
        ("--upstream", args.upstream.as_ref()),
    ] {
        if let Some(value) = value
            && value
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            bail!("{flag} {value:?}: an address has no quotes, backslashes or control characters");
        }
    }
    let mut stanza = format!(
        "\n# Added by `deputy agent add {name}`.\n[[agent]]\nname = \"{name}\"\n\
         spiffe_id = \"{spiffe_id}\"\noutbound = \"{outbound}\"\nuids = [{}]\n",
        args.uid
    );
    if let Some(upstream) = &args.upstream {
        stanza.push_str(&format!("upstream = \"{upstream}\"\n"));
    }
    let config_text = format!("{}{stanza}", text.trim_end_matches('\n').to_owned() + "\n");
    deputyd::Config::parse(&config_text, &origin).with_context(|| {
        format!("with agent {name} added, {origin} would not load; nothing was written")
    })?;
    let mut plan = Plan {
        spiffe_id: spiffe_id.clone(),
        writes: vec![(args.config.clone(), config_text)],
        done: vec![format!(
            "{origin}: [[agent]] {name}, outbound listener {outbound} (admits uid {}){}",
            args.uid,
            args.upstream
                .as_ref()
                .map(|u| format!(", serving calls at {u}"))
                .unwrap_or_default()
        )],
        next: Vec::new(),
    };
    register(args, &trust_domain, &spiffe_id, &mut plan)?;
    if let Some(data) = &args.policy_data {
        grant(data, &spiffe_id, &args.calls, &args.principals, &mut plan)?;
    }
    if let Some(dir) = &args.vault_role_dir {
        let path = dir.join(format!("{name}.json"));
        let role = serde_json::json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_subject": spiffe_id,
            "bound_audiences": ["vault"],
            "token_policies": [name],
            "token_ttl": "15m",
            "token_max_ttl": "1h",
        });
        plan.writes.push((path.clone(), format!("{role:#}\n")));
        plan.done.push(format!(
            "{}: a Vault JWT role bound to {spiffe_id} (policy {name}: give it its paths)",
            path.display()
        ));
        plan.next.push(format!(
            "vault write auth/jwt/role/{name} @{} (and a Vault policy {name} for its secrets)",
            path.display()
        ));
    }
    plan.next.push(format!(
        "restart deputyd (systemctl restart deputyd): a new agent is served from its start \
         (SIGHUP does not add agents); check it with `deputy doctor --config {}`",
        args.config.display()
    ));
    let reach = if let Some(path) = outbound.strip_prefix("unix://") {
        format!("curl --unix-socket {path} http://SERVICE/")
    } else {
        format!("curl -x http://{outbound} http://SERVICE/")
    };
    plan.next.push(format!(
        "as uid {} the agent calls through its listener: {reach}",
        args.uid
    ));
    Ok(plan)
}

/// The agent's registration: an entry of `deputy issuer`, or SPIRE's command.
fn register(
    args: &AddArgs,
    trust_domain: &str,
    spiffe_id: &str,
    plan: &mut Plan,
) -> anyhow::Result<()> {
    let name = &args.name;
    if args.spire {
        plan.next.insert(
            0,
            format!(
                "register it with SPIRE: spire/register-agent.sh --spiffe-id {spiffe_id} --agent {name} \
                 (spire-server entry create -spiffeID {spiffe_id} -selector deputy:agent:{name} \
                 -parentID <the node's agent ID>)"
            ),
        );
        return Ok(());
    }
    let Some(path) = &args.entries else {
        plan.next.insert(
            0,
            format!(
                "register it: an entry for {spiffe_id} with selector deputy:agent:{name} \
                 (--entries FILE for deputy issuer, --spire for SPIRE)"
            ),
        );
        return Ok(());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the entries file {}", path.display()))?;
    let entry = format!(
        "\n# Added by `deputy agent add {name}`: only deputyd presents this selector.\n\
         [[entry]]\nspiffe_id = \"{spiffe_id}\"\nselectors = [\"deputy:agent:{name}\"]\n"
    );
    let new_text = format!("{}{entry}", text.trim_end_matches('\n').to_owned() + "\n");
    let domain = spiffe::TrustDomain::new(trust_domain)
        .map_err(|e| anyhow::anyhow!("trust domain {trust_domain}: {e}"))?;
    let origin = path.display().to_string();
    deputy_issuer::Registry::parse(
        &new_text,
        &origin,
        path.parent().unwrap_or(Path::new(".")),
        &domain,
    )
    .with_context(|| {
        format!("with agent {name} added, {origin} would not load; nothing was written")
    })?;
    plan.writes.push((path.clone(), new_text));
    plan.done.push(format!(
        "{origin}: [[entry]] {spiffe_id}, selector deputy:agent:{name}"
    ));
    plan.next.insert(
        0,
        "tell deputy issuer to re-read its entries: kill -HUP <its pid> (systemctl reload)".into(),
    );
    Ok(())
}

/// The policy data: the agent as a caller of `calls`, and the principals it may start tasks for.
fn grant(
    path: &Path,
    spiffe_id: &str,
    calls: &[String],
    principals: &[String],
    plan: &mut Plan,
) -> anyhow::Result<()> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {origin}"))?;
    let mut data: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{origin} is not JSON"))?;
    let Some(root) = data.as_object_mut() else {
        bail!("{origin} is not a JSON object");
    };
    let services = root
        .entry("services")
        .or_insert_with(|| serde_json::json!({}));
    for service in calls {
        let Some(known) = services.get_mut(service) else {
            let names: Vec<&String> = services
                .as_object()
                .map(|s| s.keys().collect())
                .unwrap_or_default();
            bail!("{origin} has no service {service:?} (it has {names:?}); nothing was written");
        };
        let callers = known
            .as_object_mut()
            .context("a service of data.services is not an object")?
            .entry("callers")
            .or_insert_with(|| serde_json::json!([]));
        let list = callers.as_array_mut().context("callers is not a list")?;
        if !list.iter().any(|c| c == spiffe_id) {
            list.push(spiffe_id.into());
        }
    }
    if !principals.is_empty() {
        let originate = root
            .entry("originate")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .context("data.originate is not an object")?;
        originate.insert(spiffe_id.to_owned(), serde_json::json!(principals));
    }
    plan.writes
        .push((path.to_path_buf(), format!("{data:#}\n")));
    plan.done.push(format!(
        "{origin}: may call {}; may start tasks for {}",
        if calls.is_empty() {
            "no service yet".to_owned()
        } else {
            calls.join(", ")
        },
        if principals.is_empty() {
            "no one".to_owned()
        } else {
            principals.join(", ")
        }
    ));
    plan.next.push(format!(
        "check the policy: deputy policy check --dir {}",
        path.parent().unwrap_or(Path::new(".")).display()
    ));
    Ok(())
}
