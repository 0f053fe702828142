//! `deputy approvals`: list, show, approve and deny the calls a deputyd holds for a human's
//! approval, through its operator socket (`[approvals] socket`; the caller's uid must be one of
//! its `operators`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// The operator socket deputyd binds by default in the shipped configuration.
const DEFAULT_SOCKET: &str = "/run/deputy/operator.sock";

/// Where the operator socket is.
#[derive(Debug, Args)]
pub(crate) struct Socket {
    /// deputyd's operator socket (`[approvals] socket`).
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

impl Socket {
    /// The socket's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.socket
    }
}

/// `deputy approvals ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Every approval deputyd keeps, newest first.
    List {
        #[command(flatten)]
        socket: Socket,
        /// Print the JSON deputyd answered instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One approval, whole: the call it is bound to, who decided it and when.
    Show {
        #[command(flatten)]
        socket: Socket,
        /// The approval's id (`apr_...`).
        id: String,
    },
    /// Approve a pending call: the agent's identical retry naming it passes, once.
    Approve {
        #[command(flatten)]
        socket: Socket,
        /// The approval's id.
        id: String,
        /// A note kept with the decision.
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a pending call.
    Deny {
        #[command(flatten)]
        socket: Socket,
        /// The approval's id.
        id: String,
        /// Why, kept with the decision and told to the agent.
        #[arg(long)]
        note: Option<String>,
    },
}

/// Runs `command`.
pub(crate) async fn run(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let (socket, method, path, body, table) = match command {
        ApprovalsCommand::List { socket, json } => {
            (socket, "GET", "/v1/approvals".to_owned(), None, !json)
        }
        ApprovalsCommand::Show { socket, id } => (
            socket,
            "GET",
            format!("/v1/approvals/{}", segment(&id)?),
            None,
            false,
        ),
        ApprovalsCommand::Approve { socket, id, note } => (
            socket,
            "POST",
            format!("/v1/approvals/{}/approve", segment(&id)?),
            Some(serde_json::json!({ "note": note })),
            false,
        ),
        ApprovalsCommand::Deny { socket, id, note } => (
            socket,
            "POST",
            format!("/v1/approvals/{}/deny", segment(&id)?),
            Some(serde_json::json!({ "note": note })),
            false,
        ),
    };
    let (status, answer) = request(&socket.socket, method, &path, body).await?;
    if !status.is_success() {
        let message = answer["error"].as_str().unwrap_or("(no message)");
        eprintln!("error: deputyd refused ({status}): {message}");
        return Ok(ExitCode::FAILURE);
    }
    if table {
        print_table(&answer);
    } else {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as one path segment: ids are `apr_` and hex, so anything else is refused here.
fn segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("{id:?} is not an approval id (apr_ followed by letters and digits)");
    }
    Ok(id)
}

fn print_table(answer: &serde_json::Value) {
    let rows = answer["approvals"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no approvals");
        return;
    }
    for a in rows {
        let b = &a["binding"];
        let field = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        let query = b["query"].as_str().filter(|q| !q.is_empty());
        println!(
            "{}  {}  {} -> {}  {} {}{}",
            field(&a["id"]),
            field(&a["state"]),
            field(&b["agent"]),
            field(&b["service"]),
            field(&b["method"]),
            field(&b["path"]),
            query.map(|q| format!("?{q}")).unwrap_or_default(),
        );
        println!(
            "    for {} in task {}; {} body bytes; why: {}",
            field(&b["principal"]),
            field(&b["task"]),
            a["body_bytes"],
            field(&a["reason"]),
        );
    }
    println!("(deputy approvals show ID: the whole call, its body's start included)");
}

pub(crate) async fn request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach deputyd's operator socket {}; is [approvals] socket set, deputyd \
             running, and may you open the socket?",
                socket.display()
            )
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("the operator socket did not speak HTTP")?;
    tokio::spawn(connection);
    let bytes = body
        .map(|b| serde_json::to_vec(&b))
        .transpose()?
        .unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "deputyd")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&body).into_owned() }),
    );
    Ok((status, json))
}
