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
//! - `POST /mcp`: a toy MCP server: reads a whole JSON-RPC request and answers `tools/call`
//!   with a text naming the tool it ran (and logs `mcp: ran TOOL`), anything else with an
//!   empty result.
//! - `GET /bytes?n=N`: streams N bytes in 64 KiB chunks (for throughput measurements).
//! - `GET /forge`: answers with `Deputy-*` response headers of its own (a context handle, a
//!   principal), as a malicious agent would to mislead its caller; deputyd strips them.
//! - `GET /relay?to=SERVICE&path=/p[&scope=a:b,c:d][&budget=N]` (with `--outbound`): continues
//!   the task it was called for by calling `SERVICE` through its own deputyd, passing on the
//!   `Deputy-Context` it received and the narrower scope or budget asked for; answers with the
//!   downstream status and body. This is what a sub-agent does when it delegates.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
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
    /// The agent's outbound listener (`127.0.0.1:15001`), for `/relay`.
    #[arg(long)]
    outbound: Option<std::net::SocketAddr>,
}

/// What every request handler needs.
#[derive(Debug)]
struct Agent {
    name: String,
    outbound: Option<std::net::SocketAddr>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) async fn run(args: DemoAgentArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "demo agent {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let agent = std::sync::Arc::new(Agent {
        name: args.name,
        outbound: args.outbound,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let agent = agent.clone();
                async move { answer(&agent, request).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(agent: &Agent, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let response = match (request.method().as_str(), path.as_str()) {
        ("GET", "/events") => events(query_number(&request, "count").unwrap_or(3)),
        ("POST", "/upload") => upload(request).await,
        ("POST", "/mcp") => mcp(&agent.name, request).await,
        ("GET", "/bytes") => bytes(query_number(&request, "n").unwrap_or(0)),
        ("GET", "/relay") => relay(agent, &request).await,
        ("GET", "/forge") => forge(&agent.name, &request),
        _ => whoami(&agent.name, &request),
    };
    Ok(response)
}

fn query_value<'a>(request: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn query_number(request: &Request<Incoming>, key: &str) -> Option<u64> {
    query_value(request, key)?.parse().ok()
}

/// Calls `to` through the agent's deputyd under the context of the call being served.
async fn relay(agent: &Agent, request: &Request<Incoming>) -> Response<Body> {
    let refuse = |why: String| {
        json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": why }),
        )
    };
    let Some(outbound) = agent.outbound else {
        return refuse("start the demo agent with --outbound to relay".into());
    };
    let Some(to) = query_value(request, "to") else {
        return refuse("name the service to call: /relay?to=SERVICE&path=/".into());
    };
    let path = query_value(request, "path").unwrap_or("/");
    let mut call = Request::builder()
        .uri(format!("http://{outbound}{path}"))
        .header(header::HOST, to);
    for (name, value) in [
        (
            "deputy-context",
            request
                .headers()
                .get("deputy-context")
                .and_then(|v| v.to_str().ok()),
        ),
        (
            "deputy-scope",
            query_value(request, "scope")
                .map(|s| s.split(',').collect::<Vec<_>>().join(", "))
                .as_deref(),
        ),
        ("deputy-budget", query_value(request, "budget")),
    ] {
        if let Some(value) = value {
            call = call.header(name, value);
        }
    }
    let call = match call.body(Empty::new()) {
        Ok(call) => call,
        Err(e) => return refuse(format!("cannot build the call: {e}")),
    };
    let (status, body) = match agent.client.request(call).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            let body = body.map_or(serde_json::Value::Null, |b| {
                serde_json::from_slice(&b)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned().into())
            });
            (status, body)
        }
        Err(e) => (502, format!("{to} through {outbound}: {e}").into()),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "agent": agent.name,
            "relayed_to": to,
            "status": status,
            "response": body,
        }),
    )
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
            // A credential the caller's deputyd injected: that one arrived, never its value.
            "authorization": request.headers().get(header::AUTHORIZATION).map(|v| {
                let scheme = v.to_str().ok().and_then(|v| v.split(' ').next()).unwrap_or("?");
                format!("{scheme} credential ({} bytes), injected by the caller's deputyd", v.len())
            }),
        }),
    )
}

fn forge(name: &str, request: &Request<Incoming>) -> Response<Body> {
    let mut response = whoami(name, request);
    for (header, value) in [
        ("deputy-context", "dctx_forged"),
        ("deputy-principal", "user:mallory@example.org"),
        ("deputy-peer-id", "spiffe://example.org/agent/admin"),
    ] {
        response
            .headers_mut()
            .insert(header, header::HeaderValue::from_static(value));
    }
    response
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

async fn mcp(name: &str, request: Request<Incoming>) -> Response<Body> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            eprintln!("mcp: the request body failed: {e}");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": e.to_string() }),
            );
        }
    };
    let Ok(call) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let result = if call["method"] == "tools/call" {
        let tool = call["params"]["name"].as_str().unwrap_or_default();
        eprintln!("mcp: ran {tool}");
        serde_json::json!({"content": [{"type": "text", "text": format!("{name} ran {tool}")}]})
    } else {
        serde_json::json!({})
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"jsonrpc": "2.0", "id": call["id"], "result": result}),
    )
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
