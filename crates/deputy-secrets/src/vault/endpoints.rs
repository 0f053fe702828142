//! The Vault endpoints vaultrs lacks or strips: a credential read that keeps its lease
//! (`lease_id`, `lease_duration`, `renewable` sit beside `data`, which vaultrs returns alone),
//! and `sys/leases/renew`.

use std::collections::BTreeMap;
use std::time::Duration;

use rustify::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde::Deserialize;
use vaultrs::client::{Client as _, VaultClient};

use super::{Issued, VaultError, clamp_ttl, classify};
use crate::secret::SecretString;
use crate::spec::Source;

/// A request whose whole response envelope is wanted.
struct Raw {
    method: RequestMethod,
    path: String,
    body: Option<serde_json::Value>,
}

/// Vault's response envelope (the parts deputyd reads).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

impl Endpoint for Raw {
    type Response = Envelope;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.as_ref().map(|b| b.to_string().into_bytes()))
    }
}

async fn send(
    client: &VaultClient,
    address: &str,
    what: &str,
    raw: Raw,
) -> Result<Envelope, VaultError> {
    raw.with_middleware(client.middle())
        .exec(client.http())
        .await
        .map_err(|e| classify(address, what, vaultrs_error(e)))?
        .parse()
        .map_err(|_| VaultError::Malformed {
            what: what.to_owned(),
            reason: "the response is not Vault's JSON envelope".into(),
        })
}

/// rustify's error as vaultrs reports it (Vault's `errors` read out of an error response).
fn vaultrs_error(e: rustify::errors::ClientError) -> vaultrs::error::ClientError {
    use rustify::errors::ClientError as Rest;
    if let Rest::ServerResponseError {
        code,
        content: Some(content),
    } = &e
        && let Ok(body) = serde_json::from_str::<ErrorBody>(content)
    {
        return vaultrs::error::ClientError::APIError {
            code: *code,
            errors: body.errors,
        };
    }
    vaultrs::error::ClientError::RestClientError { source: e }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

pub(super) async fn issue(
    client: &VaultClient,
    address: &str,
    source: &Source,
) -> Result<Issued, VaultError> {
    let what = format!("reading {}", source.path());
    let envelope = send(
        client,
        address,
        &what,
        Raw {
            method: RequestMethod::GET,
            path: source.path(),
            body: None,
        },
    )
    .await?;
    let malformed = |reason: &str| VaultError::Malformed {
        what: what.clone(),
        reason: reason.to_owned(),
    };
    let data = envelope.data.ok_or_else(|| malformed("no data"))?;
    let object = match source {
        Source::Database { .. } => data,
        // KV v2 nests the secret's keys under data.data (null once deleted).
        Source::Kv { .. } => data.get("data").cloned().unwrap_or_default(),
    };
    let serde_json::Value::Object(object) = object else {
        return Err(malformed("the secret's data is not an object (deleted?)"));
    };
    let fields = object
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (key, SecretString::new(text))
        })
        .collect::<BTreeMap<_, _>>();
    if matches!(source, Source::Database { .. })
        && !(fields.contains_key("username") && fields.contains_key("password"))
    {
        return Err(malformed(
            "a database credential without username and password",
        ));
    }
    Ok(Issued {
        fields,
        lease_id: envelope.lease_id,
        ttl: clamp_ttl(envelope.lease_duration),
        renewable: envelope.renewable,
    })
}

pub(super) async fn renew_lease(
    client: &VaultClient,
    address: &str,
    lease_id: &str,
    increment: Duration,
) -> Result<Duration, VaultError> {
    let envelope = send(
        client,
        address,
        "renewing a lease",
        Raw {
            method: RequestMethod::PUT,
            path: "sys/leases/renew".into(),
            body: Some(serde_json::json!({
                "lease_id": lease_id,
                "increment": increment.as_secs(),
            })),
        },
    )
    .await?;
    Ok(clamp_ttl(envelope.lease_duration))
}
