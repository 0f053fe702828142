//! `deputy audit verify` and `deputy audit query`: check nodes' audit trails, and ask them who
//! did what for whom.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use deputy_audit::query::{Filter, query};
use deputy_audit::{Event, verify};

/// `deputy audit ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check that a trail is whole: every record in order and chained to the one before it.
    /// Names the first record that is not, and says how much of the end nothing vouches for.
    Verify {
        /// The trail's directory (`[audit] dir`; by default the state directory's audit/).
        dir: PathBuf,
        /// PEM CA certificates of the trust domain(s) the node's SVID chains to: its signed
        /// checkpoints are checked against them (without, only the chain is).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Trust domain of CA certificates that do not name one.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who did what for whom: the calls, revocations and approvals of one or more nodes'
    /// trails, oldest first.
    Query {
        /// The trails' directories (one per node: a task's records on every node it crossed).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only calls for this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only calls this agent (a name or SPIFFE ID) made, received or took part in.
        #[arg(long)]
        agent: Option<String>,
        /// From this time (RFC 3339: `2026-12-04T10:00:00Z`).
        #[arg(long, value_parser = rfc3339)]
        since: Option<time::OffsetDateTime>,
        /// Before this time (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        until: Option<time::OffsetDateTime>,
        /// Print JSON Lines (each record with the trail it came from) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `command`.
pub(crate) fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            dir,
            bundle,
            trust_domain,
            json,
        } => {
            let anchors = bundle
                .map(|b| crate::chain::anchors(&b, trust_domain.as_deref()))
                .transpose()?;
            let report = verify::verify_dir(&dir, anchors.as_ref()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the trail in {}: {e}; name the [audit] dir",
                    dir.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if let Some(bad) = &report.first_bad {
                println!(
                    "NOT WHOLE: {} record(s) follow from the start; line {} does not: {}",
                    report.records, bad.line, bad.why
                );
            } else {
                let signed = if report.signatures_checked {
                    format!(
                        "{} checkpoint(s), signatures valid (signed by {})",
                        report.checkpoints,
                        if report.signers.is_empty() {
                            "-".to_owned()
                        } else {
                            report.signers.join(", ")
                        }
                    )
                } else {
                    format!(
                        "{} checkpoint(s), signatures NOT checked (give --bundle)",
                        report.checkpoints
                    )
                };
                println!(
                    "whole: {} record(s) in order, each chained to the one before; {signed}; \
                     the last {} record(s), after the last checkpoint, have only the chain (a \
                     cut end or a changed last record cannot be told)",
                    report.records, report.unprotected_tail
                );
            }
            Ok(if report.first_bad.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        AuditCommand::Query {
            dirs,
            task,
            principal,
            agent,
            since,
            until,
            json,
        } => {
            let filter = Filter {
                task,
                principal,
                agent,
                since,
                until,
            };
            let dirs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            let found = query(&dirs, &filter)?;
            for f in &found {
                if json {
                    println!("{}", serde_json::to_string(f)?);
                } else {
                    println!(
                        "{}  {}  {}",
                        f.record.time,
                        f.trail.display(),
                        line(&f.record.event)
                    );
                }
            }
            if !json && found.is_empty() {
                println!("no records");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rfc3339(text: &str) -> Result<time::OffsetDateTime, String> {
    deputy_audit::query::parse_time(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 time (2026-12-04T10:00:00Z)"))
}

/// `text` with control characters escaped: what agents and peers chose (a path, a task, a
/// principal) cannot drive the terminal.
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A record in one line of words.
fn line(event: &Event) -> String {
    shown(&words(event))
}

fn words(event: &Event) -> String {
    match event {
        Event::Call(c) => format!(
            "{} {} -> {} {} {} {}  task {} for {}  request {}",
            c.direction,
            if c.direction == "inbound" {
                &c.peer
            } else {
                &c.agent
            },
            c.service,
            c.method,
            c.path,
            c.status,
            c.task.as_deref().unwrap_or("-"),
            c.principal.as_deref().unwrap_or("-"),
            c.request_id
        ),
        Event::Revocation {
            subject,
            by,
            reason,
            ..
        } => format!("revoked {subject} by {by}: {reason}"),
        Event::Approval {
            id, decision, by, ..
        } => format!("approval {id} {decision} by {by}"),
        Event::Opened { lost, .. } => format!("trail opened ({lost} record(s) lost before)"),
        Event::Identity {
            name,
            state,
            serial,
            ..
        } => format!(
            "identity {name} {state} (serial {})",
            serial.as_deref().unwrap_or("-")
        ),
        Event::Lease {
            agent,
            secret,
            change,
            generation,
            ..
        } => format!("secret {agent}/{secret} {change} (generation {generation})"),
        Event::Policy { revision } => format!("policy revision {revision} serving"),
        Event::TaskCredential {
            agent,
            task,
            secret,
            change,
            ..
        } => format!("task {task}: {agent}'s {secret} {change}"),
        Event::RevocationRefused { peer, why, .. } => {
            format!("refused a revocation from {peer}: {why}")
        }
        Event::Config {
            outcome,
            file_sha256,
            removed,
            ..
        } => format!(
            "configuration {outcome} (sha256 {}){}",
            &file_sha256[..file_sha256.len().min(12)],
            if removed.is_empty() {
                String::new()
            } else {
                format!(", removed {}", removed.join(", "))
            }
        ),
        Event::Checkpoint { upto, .. } => format!("checkpoint: {upto} record(s) signed"),
        other => other.kind().to_owned(),
    }
}
