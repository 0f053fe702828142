//! `deputy revoke` and `deputy revocations list`: revoke a task, an agent or a principal on a
//! deputyd, through its operator socket. deputyd refuses new calls under it, cuts the calls in
//! flight, drops its contexts and revokes its task credentials, and sends the revocation on to
//! every node it extended the task to.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::approvals::{Socket, request};

/// What `deputy revoke` revokes: exactly one of the three.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Subject {
    /// A task id: every chain of that task.
    #[arg(long)]
    task: Option<String>,
    /// An agent's SPIFFE ID: every call it makes, receives or takes part in.
    #[arg(long)]
    agent: Option<String>,
    /// A principal (`user:alice@example.org`): every chain acting for it.
    #[arg(long)]
    principal: Option<String>,
}

/// Arguments of `deputy revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    subject: Subject,
    /// Why: kept with the revocation and told to every agent it refuses.
    #[arg(long)]
    reason: String,
    /// How long it lasts (`10m`, `1h`; at most a day). A task's defaults to when its chains
    /// expire; an agent's or a principal's must be given.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    for_: Option<Duration>,
    #[command(flatten)]
    socket: Socket,
}

/// `deputy revocations ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RevocationsCommand {
    /// The revocations in force on a deputyd, newest first.
    List {
        #[command(flatten)]
        socket: Socket,
        /// Print the JSON deputyd answered instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `deputy revoke`.
pub(crate) async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let Subject {
        task,
        agent,
        principal,
    } = args.subject;
    let body = serde_json::json!({
        "task": task,
        "agent": agent,
        "principal": principal,
        "reason": args.reason,
        "for_seconds": args.for_.map(|d| d.as_secs()),
    });
    let (status, answer) = request(
        args.socket.path(),
        "POST",
        "/v1/revocations",
        Some(without_nulls(body)),
    )
    .await?;
    if !status.is_success() {
        let message = answer["error"].as_str().unwrap_or("(no message)");
        eprintln!("error: deputyd refused ({status}): {message}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs `deputy revocations ...`.
pub(crate) async fn run(command: RevocationsCommand) -> anyhow::Result<ExitCode> {
    let RevocationsCommand::List { socket, json } = command;
    let (status, answer) = request(socket.path(), "GET", "/v1/revocations", None).await?;
    if !status.is_success() {
        let message = answer["error"].as_str().unwrap_or("(no message)");
        eprintln!("error: deputyd refused ({status}): {message}");
        return Ok(ExitCode::FAILURE);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = answer["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no revocations in force");
    }
    for r in rows {
        let field = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "{}  {}  by {}  until {}  why: {}",
            field(&r["id"]),
            subject(&r["subject"]),
            field(&r["by"]),
            r["until"],
            field(&r["reason"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A revocation's subject in words: `task ID`, `agent ID`, `principal P`, or an exact task
/// (`task ID (started by AGENT for P)`, as another node relays it).
fn subject(subject: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let (kind, value) = (&subject["kind"], &subject["value"]);
    if kind == "exact_task" {
        return format!(
            "task {} (started by {} for {})",
            text(&value["id"]),
            text(&value["originator"]),
            text(&value["principal"])
        );
    }
    format!("{} {}", text(kind), text(value))
}

/// `value` without its null fields: deputyd takes exactly one subject.
fn without_nulls(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    value
}
