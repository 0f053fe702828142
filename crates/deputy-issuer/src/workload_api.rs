//! The SPIFFE Workload API, as SPIRE agents serve it.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata (InvalidArgument otherwise,
//! as SPIRE does: it proves the caller meant to talk to a Workload API and was not tricked into
//! it, for example by a server-side request forgery). The caller is attested by SO_PEERCRED and
//! receives the SVIDs of every entry its selectors match.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use deputy_identity::Selector;
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid};
use tonic::{Request, Response, Status};

use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use crate::streaming::{Api, ResponseStream, caller, entries_or_refuse, follow, internal};
use crate::svids::Issuer;

/// The metadata key every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    issuer: Arc<Issuer>,
}

impl WorkloadApi {
    /// A Workload API backed by `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self { issuer }
    }
}

fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: Workload API calls must carry the \
             `workload.spiffe.io: true` metadata (SPIFFE Workload API clients add it)",
        )),
    }
}

/// Checks the header, attests the caller and returns its selectors.
fn admit<T>(request: &Request<T>) -> Result<(String, BTreeSet<Selector>), Status> {
    check_security_header(request)?;
    let who = caller(request)?;
    Ok((who.to_string(), who.selectors()))
}

/// Federated bundles keyed by the SPIFFE ID of their trust domain, as SPIRE sends them.
pub(crate) fn federated_bundles(issuer: &Issuer) -> HashMap<String, Vec<u8>> {
    issuer
        .registry()
        .federated
        .iter()
        .map(|(td, der)| (format!("spiffe://{td}"), der.clone()))
        .collect()
}

fn trust_domain_key(issuer: &Issuer) -> String {
    format!("spiffe://{}", issuer.authority().trust_domain())
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (who, selectors) = admit(&request)?;
        tracing::debug!(caller = %who, "FetchX509SVID");
        let stream = follow(self.issuer.clone(), move |issuer| {
            let entries = entries_or_refuse(issuer, Api::Workload, &who, &selectors)?;
            let bundle = issuer.authority().bundle_der().to_vec();
            let svids = entries
                .iter()
                .map(|entry| {
                    let svid = issuer.x509_svid(entry).map_err(internal)?;
                    Ok(X509svid {
                        spiffe_id: entry.spiffe_id.to_string(),
                        x509_svid: svid.cert_der.clone(),
                        x509_svid_key: svid.key_pkcs8_der.clone(),
                        bundle: bundle.clone(),
                        hint: String::new(),
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles: federated_bundles(issuer),
            })
        })?;
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (who, selectors) = admit(&request)?;
        let stream = follow(self.issuer.clone(), move |issuer| {
            entries_or_refuse(issuer, Api::Workload, &who, &selectors)?;
            let mut bundles = federated_bundles(issuer);
            bundles.insert(
                trust_domain_key(issuer),
                issuer.authority().bundle_der().to_vec(),
            );
            Ok(X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            })
        })?;
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let (who, selectors) = admit(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument(
                "audience must be specified: name the service the JWT-SVID is for",
            ));
        }
        let mut entries = entries_or_refuse(&self.issuer, Api::Workload, &who, &selectors)?;
        if !request.spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id.to_string() == request.spiffe_id);
            if entries.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no identity issued: this caller ({who}) is not entitled to {}",
                    request.spiffe_id
                )));
            }
        }
        let svids = entries
            .iter()
            .map(|entry| {
                let (token, _, _) = self
                    .issuer
                    .authority()
                    .mint_jwt_svid(&entry.spiffe_id, &request.audience, entry.jwt_ttl)
                    .map_err(internal)?;
                Ok(Jwtsvid {
                    spiffe_id: entry.spiffe_id.to_string(),
                    svid: token,
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let (who, selectors) = admit(&request)?;
        let stream = follow(self.issuer.clone(), move |issuer| {
            entries_or_refuse(issuer, Api::Workload, &who, &selectors)?;
            Ok(JwtBundlesResponse {
                bundles: HashMap::from([(trust_domain_key(issuer), issuer.authority().jwks())]),
            })
        })?;
        Ok(Response::new(stream))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_security_header(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let (spiffe_id, claims) = validate_jwt(&self.issuer, &request.svid, &request.audience)?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(claims),
        }))
    }
}

/// Validates a JWT-SVID with the issuer's own JWT bundle, using the `spiffe` crate's validator.
pub(crate) fn validate_jwt(
    issuer: &Issuer,
    token: &str,
    audience: &str,
) -> Result<(String, prost_types::Struct), Status> {
    let authority = issuer.authority();
    let bundle =
        JwtBundle::from_jwt_authorities(authority.trust_domain().clone(), &authority.jwks())
            .map_err(internal)?;
    let mut bundles = JwtBundleSet::new();
    bundles.add_bundle(bundle);
    // Name an audience mismatch plainly; the validator reports it as a decoding failure.
    let unverified = JwtSvid::parse_insecure(token)
        .map_err(|e| Status::invalid_argument(format!("unable to parse JWT-SVID: {e}")))?;
    if !unverified.audience().iter().any(|a| a == audience) {
        return Err(Status::invalid_argument(format!(
            "the JWT-SVID is for audience [{}], not {audience:?}",
            unverified.audience().join(", ")
        )));
    }
    let svid = JwtSvid::parse_and_validate(token, &bundles, &[audience])
        .map_err(|e| Status::invalid_argument(format!("unable to validate JWT-SVID: {e}")))?;
    Ok((svid.spiffe_id().to_string(), claims_of(token)))
}

/// The claims of an already validated token, as a protobuf Struct.
fn claims_of(token: &str) -> prost_types::Struct {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        })
        .unwrap_or_default();
    prost_types::Struct {
        fields: payload
            .into_iter()
            .map(|(k, v)| (k, to_proto_value(v)))
            .collect(),
    }
}

fn to_proto_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_proto_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, to_proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
