//! `deputy dev`: a local mesh on one machine, for trying Deputy and for developing against it.
//!
//! It starts real processes from this binary, in a temporary directory, and stays up until
//! Ctrl-C: an embedded issuer, two deputyd nodes and two demo agents. Both nodes enforce the
//! shipped policy (`policies/authz`) with data naming the two agents, written to `DIR/policy`.
//!
//! ```text
//! node1: admin base+0,  agent alpha outbound base+1, alpha serves on base+2,  inbound base+8
//! node2: admin base+10, agent beta outbound base+11, beta serves on base+12, inbound base+18
//! ```
//!
//! With Vault (or OpenBao) and PostgreSQL installed, alpha also gets Vault secrets (`secrets.rs`:
//! its PostgreSQL proxy on base+3, PostgreSQL on base+5, Vault on base+6 and base+7).

mod policy;
pub(crate) mod process;
mod secrets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use process::{http_get, spawn, wait_for};

const TRUST_DOMAIN: &str = "example.org";

/// Arguments of `deputy dev`.
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Keep state and logs in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// First of the 127.0.0.1 ports the mesh uses (it uses base to base+19).
    #[arg(long, default_value_t = 15000)]
    base_port: u16,
}

/// One node of the dev mesh and the agent it fronts.
struct NodePlan {
    node: &'static str,
    agent: &'static str,
    peer_agent: &'static str,
    offset: u16,
}

const NODES: [NodePlan; 2] = [
    NodePlan {
        node: "node1",
        agent: "alpha",
        peer_agent: "beta",
        offset: 0,
    },
    NodePlan {
        node: "node2",
        agent: "beta",
        peer_agent: "alpha",
        offset: 10,
    },
];

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("deputy-dev-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let base = args.base_port;
    if base > u16::MAX - 20 {
        bail!("--base-port {base} leaves no room for the 20 ports the mesh uses");
    }
    let uid = nix::unistd::geteuid().as_raw();
    let exe = std::env::current_exe().context("cannot find the deputy binary")?;
    let workload_socket = dir.join("workload.sock");
    let admin_socket = dir.join("admin.sock");
    let entries = dir.join("entries.toml");
    std::fs::write(&entries, entries_toml(uid))?;
    let policy_dir = policy::write(&dir, TRUST_DOMAIN)
        .with_context(|| format!("cannot write the dev policy under {}", dir.display()))?;

    let mut processes = Vec::new();
    let mut issuer = spawn(
        "issuer",
        Command::new(&exe)
            .arg("issuer")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(dir.join("ca"))
            .arg("--workload-socket")
            .arg(&workload_socket)
            .arg("--admin-socket")
            .arg(&admin_socket)
            .arg("--entries")
            .arg(&entries),
        &dir,
    )?;
    wait_for(&mut issuer, &dir, || async {
        tokio::net::UnixStream::connect(&workload_socket)
            .await
            .is_ok()
    })
    .await?;
    processes.push(issuer);

    for plan in &NODES {
        let port = base + plan.offset + 2;
        let mut agent = spawn(
            plan.agent,
            Command::new(&exe).args([
                "demo-agent",
                "--name",
                plan.agent,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]),
            &dir,
        )?;
        wait_for(&mut agent, &dir, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await?;
        processes.push(agent);
    }
    let vault = match secrets::find() {
        Ok(found) => match secrets::start(found, &dir, base).await {
            Ok(running) => Some(running),
            Err(e) => {
                eprintln!("the secrets demo is off: {e:#}");
                None
            }
        },
        Err(why) => {
            eprintln!("{why}");
            None
        }
    };
    for plan in &NODES {
        let config = dir.join(format!("{}.toml", plan.node));
        let mut text = node_toml(
            plan,
            &workload_socket,
            &admin_socket,
            &policy_dir,
            base,
            uid,
            vault
                .as_ref()
                .filter(|_| plan.agent == "alpha")
                .map(|v| v.alpha_config(base))
                .unwrap_or_default()
                .as_str(),
        );
        if let Some(vault) = vault.as_ref().filter(|_| plan.agent == "alpha") {
            text.push_str(&vault.vault_config());
        }
        std::fs::write(&config, text)?;
        let mut node = spawn(
            plan.node,
            Command::new(&exe).arg("node").arg("--config").arg(&config),
            &dir,
        )?;
        let admin = format!("127.0.0.1:{}", base + plan.offset);
        wait_for(&mut node, &dir, || async {
            http_get(&admin, "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        })
        .await?;
        processes.push(node);
    }

    let secrets_on = match vault {
        Some(running) => {
            let admin = format!("127.0.0.1:{base}");
            running.configure(&admin, TRUST_DOMAIN).await?;
            let ready = wait_secrets(&admin).await;
            processes.extend(running.processes);
            if !ready {
                eprintln!("alpha's secrets are not available yet; see node1.log and /status");
            }
            true
        }
        None => false,
    };

    print_summary(&dir, &workload_socket, &policy_dir, base, uid);
    if secrets_on {
        print_secrets(base);
    }

    let exited = futures::future::select_all(
        processes
            .iter_mut()
            .map(|p| Box::pin(async { (p.name, p.child.wait().await) })),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        ((name, status), _, _) = exited => {
            eprintln!(
                "{name} exited ({}); see {}",
                status.map(|s| s.to_string()).unwrap_or_default(),
                dir.join(format!("{name}.log")).display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!("\nstopping");
    // Nodes first, then agents and the issuer: the reverse of the start.
    while let Some(process) = processes.pop() {
        drop(process);
    }
    Ok(ExitCode::SUCCESS)
}

fn entries_toml(uid: u32) -> String {
    let mut out = format!(
        "# Written by `deputy dev`. The nodes are attested by their uid; the agents are\n\
         # delegated-only (deputy:agent:NAME): only deputyd obtains their SVIDs.\n\n\
         [[entry]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/deputyd/dev\"\nselectors = [\"unix:uid:{uid}\"]\n\n"
    );
    for plan in &NODES {
        let agent = plan.agent;
        out.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{agent}\"\n\
             selectors = [\"deputy:agent:{agent}\"]\nx509_ttl = \"10m\"\n\n"
        ));
    }
    out.push_str(&format!("[[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"));
    out
}

/// Waits (at most 30 s) until node1's `/status` shows alpha's secrets available.
async fn wait_secrets(admin: &str) -> bool {
    for _ in 0..300 {
        if let Some((200, body)) = http_get(admin, "/status").await
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(&body)
            && status["secrets"][0]["secrets"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "available"))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

fn print_secrets(base: u16) {
    println!(
        "
Secrets (Vault dev server and PostgreSQL): alpha logs in to Vault as itself and never"
    );
    println!("holds a credential. Its calls to beta carry a Vault KV secret deputyd injects:");
    println!(
        "  curl -s -x http://127.0.0.1:{} http://beta/hello   (beta's answer: \"authorization\")",
        base + 1
    );
    println!("Its database user (SELECT only) is Vault's; deputyd logs in for it, no password:");
    println!(
        "  psql -h 127.0.0.1 -p {} -d tickets -c 'SELECT * FROM tickets'",
        base + secrets::PROXY_OFFSET
    );
    println!(
        "  curl -s http://127.0.0.1:{base}/status   (each lease's state and expiry, no value)"
    );
}

fn node_toml(
    plan: &NodePlan,
    workload: &Path,
    admin_socket: &Path,
    policy: &Path,
    base: u16,
    uid: u32,
    agent_extra: &str,
) -> String {
    let port = |offset: u16| base + plan.offset + offset;
    let peer_inbound = base + (10 - plan.offset) + 8;
    let (agent, peer) = (plan.agent, plan.peer_agent);
    format!(
        "# Written by `deputy dev`.\ntrust_domain = \"{TRUST_DOMAIN}\"\n\n[identity]\n\
         workload_api = \"unix://{workload}\"\ndelegated_identity_api = \"unix://{admin}\"\n\
         min_backoff = \"200ms\"\nmax_backoff = \"2s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[state]\ndir = \"{state}\"\n\n\
         [inbound]\nlisten = \"127.0.0.1:{inbound}\"\n\n\
         [[agent]]\nname = \"{agent}\"\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{agent}\"\n\
         outbound = \"127.0.0.1:{outbound}\"\n\
         upstream = \"http://127.0.0.1:{upstream}\"\nuids = [{uid}]\n{agent_extra}\n\
         [[service]]\nname = \"{peer}\"\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{peer}\"\n\
         address = \"127.0.0.1:{peer_inbound}\"\n\n\
         [policy]\ndir = \"{policy}\"\nwatch_interval = \"1s\"\n",
        policy = policy.display(),
        // Beside the sockets, one per node (budget counts outlive a node's restart).
        state = workload
            .with_file_name(format!("state-{}", plan.node))
            .display(),
        workload = workload.display(),
        admin = admin_socket.display(),
        admin_port = port(0),
        inbound = port(8),
        outbound = port(1),
        upstream = port(2),
    )
}

fn print_summary(dir: &Path, workload: &Path, policy: &Path, base: u16, uid: u32) {
    println!("Deputy dev mesh is up (trust domain {TRUST_DOMAIN}). Ctrl-C stops it.\n");
    println!("  state and logs  {}", dir.display());
    println!(
        "  issuer          Workload API unix://{}",
        workload.display()
    );
    for plan in &NODES {
        let port = |offset: u16| base + plan.offset + offset;
        println!(
            "  {}           admin http://127.0.0.1:{}   inbound mTLS 127.0.0.1:{}",
            plan.node,
            port(0),
            port(8)
        );
        println!(
            "    agent {:<6}  spiffe://{TRUST_DOMAIN}/agent/{}   outbound http://127.0.0.1:{} (uid {uid})   serves on 127.0.0.1:{}",
            plan.agent,
            plan.agent,
            port(1),
            port(2)
        );
    }
    println!("\nCall agent beta (node2) as agent alpha (node1), through the mesh:");
    println!(
        "  curl -s -x http://127.0.0.1:{} http://beta/hello",
        base + 1
    );
    println!("beta's answer shows the verified caller: spiffe://{TRUST_DOMAIN}/agent/alpha.");
    println!(
        "\nStart a task for a user as alpha; beta gets the verified facts and a context handle:"
    );
    println!(
        "  curl -s -x http://127.0.0.1:{} -H 'Deputy-Principal: user:alice@example.org' \\\n    \
         -H 'Deputy-Scope: tickets:read' -H 'Deputy-Budget: 3' http://beta/tickets",
        base + 1
    );
    println!(
        "\nEvery call is decided by the policy in {} (edit data.json; both nodes reload it).",
        policy.display()
    );
    println!("An irreversible action needs approval, so it is refused with the decision's id:");
    println!(
        "  curl -s -x http://127.0.0.1:{} -X DELETE http://beta/tickets/9",
        base + 1
    );
    println!("\nMore:");
    println!(
        "  curl -s -N -x http://127.0.0.1:{} 'http://beta/events?count=5'",
        base + 1
    );
    println!("  curl -s http://127.0.0.1:{base}/status");
    println!("  curl -s http://127.0.0.1:{base}/metrics | grep deputy_");
}
