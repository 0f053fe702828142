//! `deputy demo-agent`: an example agent behind deputyd.
//!
//! It answers over plain HTTP/1.1 and h2c, and shows what deputyd told it about the caller:
//!
//! - `GET /` (any path): JSON with the agent's name, the method and path, and every `Deputy-*`
//!   header it received (`Deputy-Peer-Id` is the verified caller).
//! - `GET /events?count=N`: a server-sent event stream (as MCP's streamable HTTP uses), one event
//!   every 100 ms.
//! - `POST /upload`: reads the body as it streams and answers with its length, never holding it
//!   whole.
//! - `GET /bytes?n=N`: streams N bytes in 64 KiB chunks (for throughput measurements).

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Arguments of `deputy demo-agent`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoAgentArgs {
    /// The agent's name, shown in its answers.
    #[arg(long)]
    name: String,
    /// Where to listen (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) async fn run(args: DemoAgentArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "demo agent {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(name, request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(name: &str, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let response = match (request.method().as_str(), path.as_str()) {
        ("GET", "/events") => events(query_number(&request, "count").unwrap_or(3)),
        ("POST", "/upload") => upload(request).await,
        ("GET", "/bytes") => bytes(query_number(&request, "n").unwrap_or(0)),
        _ => whoami(name, &request),
    };
    Ok(response)
}

fn query_number(request: &Request<Incoming>, key: &str) -> Option<u64> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn whoami(name: &str, request: &Request<Incoming>) -> Response<Body> {
    let deputy: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("deputy-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "agent": name,
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "caller": request.headers().get("deputy-peer-id").and_then(|v| v.to_str().ok()),
            "deputy_headers": deputy,
        }),
    )
}

fn events(count: u64) -> Response<Body> {
    let stream = futures::stream::unfold(0u64, move |i| async move {
        if i >= count {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let event = format!("id: {i}\nevent: tick\ndata: {{\"n\":{i}}}\n\n");
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

fn bytes(total: u64) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![0u8; CHUNK as usize]);
    let stream = futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < total).then(|| {
                let len = CHUNK.min(total - sent);
                (
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..len as usize))),
                    sent + len,
                )
            })
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

async fn upload(request: Request<Incoming>) -> Response<Body> {
    let mut body = request.into_body();
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": e.to_string(), "received": bytes }),
                );
            }
        }
    }
    json(StatusCode::OK, &serde_json::json!({ "received": bytes }))
}
