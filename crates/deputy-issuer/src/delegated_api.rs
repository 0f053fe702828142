//! SPIRE's Delegated Identity API (`spire.api.agent.delegatedidentity.v1`), served on the admin
//! socket to authorized delegates only.
//!
//! A delegate (deputyd) obtains the SVIDs of the workloads it fronts, either by giving their
//! selectors (it attested them itself) or a pid (the issuer attests it). Never both: the proto
//! has no `oneof`, so the handler enforces the exclusion, as SPIRE does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use deputy_identity::Selector;
use tonic::{Request, Response, Status};

use crate::attest::Process;
use crate::proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentity;
use crate::proto::spire::api::agent::delegatedidentity::v1::{
    FetchJwtsviDsRequest, FetchJwtsviDsResponse, SubscribeToJwtBundlesRequest,
    SubscribeToJwtBundlesResponse, SubscribeToX509BundlesRequest, SubscribeToX509BundlesResponse,
    SubscribeToX509sviDsRequest, SubscribeToX509sviDsResponse, X509svidWithKey,
};
use crate::proto::spire::api::types;
use crate::streaming::{Api, ResponseStream, caller, entries_or_refuse, follow, internal, join};
use crate::svids::Issuer;
use crate::workload_api::federated_bundles;

/// The Delegated Identity API service.
#[derive(Debug, Clone)]
pub struct DelegatedIdentityApi {
    issuer: Arc<Issuer>,
}

impl DelegatedIdentityApi {
    /// A Delegated Identity API backed by `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self { issuer }
    }

    /// Refuses callers that no `[[delegate]]` describes; returns the caller's selectors, which
    /// open streams check again after every reload, so removing a delegate ends its streams.
    fn authorize<T>(&self, request: &Request<T>) -> Result<Delegate, Status> {
        let who = caller(request)?;
        let delegate = Delegate {
            who: who.to_string(),
            selectors: who.selectors(),
        };
        delegate.check(&self.issuer)?;
        Ok(delegate)
    }
}

/// An attested caller of the admin socket.
struct Delegate {
    who: String,
    selectors: BTreeSet<Selector>,
}

impl Delegate {
    fn check(&self, issuer: &Issuer) -> Result<(), Status> {
        if issuer.registry().is_delegate(&self.selectors) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "caller is not an authorized delegate ({}; selectors: {}): add a [[delegate]] \
                 with its selectors to the issuer's entries file (authorized_delegates in SPIRE)",
                self.who,
                join(&self.selectors)
            )))
        }
    }
}

/// The workload a request is about: its selectors as given, or those of its pid.
fn workload(
    selectors: &[types::Selector],
    pid: i32,
) -> Result<(String, BTreeSet<Selector>), Status> {
    match (selectors.is_empty(), pid) {
        (false, 0) => {
            let set = selectors
                .iter()
                .map(|s| {
                    format!("{}:{}", s.r#type, s.value)
                        .parse::<Selector>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            Ok(("the workload the delegate described".to_owned(), set))
        }
        (true, pid) if pid > 0 => {
            let process =
                Process::from_pid(pid).map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok((process.to_string(), process.selectors()))
        }
        (false, _) => Err(Status::invalid_argument(
            "give either selectors or a pid, not both",
        )),
        (true, _) => Err(Status::invalid_argument(
            "give the selectors or the pid of the workload",
        )),
    }
}

fn spiffe_id_message(id: &spiffe::SpiffeId) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    }
}

fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl DelegatedIdentity for DelegatedIdentityApi {
    type SubscribeToX509SVIDsStream = ResponseStream<SubscribeToX509sviDsResponse>;
    type SubscribeToX509BundlesStream = ResponseStream<SubscribeToX509BundlesResponse>;
    type SubscribeToJWTBundlesStream = ResponseStream<SubscribeToJwtBundlesResponse>;

    async fn subscribe_to_x509svi_ds(
        &self,
        request: Request<SubscribeToX509sviDsRequest>,
    ) -> Result<Response<Self::SubscribeToX509SVIDsStream>, Status> {
        let delegate = self.authorize(&request)?;
        let request = request.into_inner();
        let (who, selectors) = workload(&request.selectors, request.pid)?;
        let stream = follow(self.issuer.clone(), move |issuer| {
            delegate.check(issuer)?;
            let entries = entries_or_refuse(issuer, Api::DelegatedIdentity, &who, &selectors)?;
            let x509_svids = entries
                .iter()
                .map(|entry| {
                    let svid = issuer.x509_svid(entry).map_err(internal)?;
                    Ok(X509svidWithKey {
                        x509_svid: Some(types::X509svid {
                            cert_chain: vec![svid.cert_der.clone()],
                            id: Some(spiffe_id_message(&entry.spiffe_id)),
                            expires_at: unix_seconds(svid.not_after),
                            hint: String::new(),
                        }),
                        x509_svid_key: svid.key_pkcs8_der.clone(),
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(SubscribeToX509sviDsResponse {
                x509_svids,
                federates_with: issuer.registry().federated.keys().cloned().collect(),
            })
        })?;
        Ok(Response::new(stream))
    }

    async fn subscribe_to_x509_bundles(
        &self,
        request: Request<SubscribeToX509BundlesRequest>,
    ) -> Result<Response<Self::SubscribeToX509BundlesStream>, Status> {
        let delegate = self.authorize(&request)?;
        let stream = follow(self.issuer.clone(), move |issuer| {
            delegate.check(issuer)?;
            let authority = issuer.authority();
            let mut ca_certificates = federated_bundles(issuer);
            ca_certificates.insert(
                format!("spiffe://{}", authority.trust_domain()),
                authority.bundle_der().to_vec(),
            );
            Ok(SubscribeToX509BundlesResponse { ca_certificates })
        })?;
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvi_ds(
        &self,
        request: Request<FetchJwtsviDsRequest>,
    ) -> Result<Response<FetchJwtsviDsResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let (who, selectors) = workload(&request.selectors, request.pid)?;
        let entries = entries_or_refuse(&self.issuer, Api::DelegatedIdentity, &who, &selectors)?;
        let svids = entries
            .iter()
            .map(|entry| {
                let (token, iat, exp) = self
                    .issuer
                    .authority()
                    .mint_jwt_svid(&entry.spiffe_id, &request.audience, entry.jwt_ttl)
                    .map_err(internal)?;
                Ok(types::Jwtsvid {
                    token,
                    id: Some(spiffe_id_message(&entry.spiffe_id)),
                    expires_at: exp,
                    issued_at: iat,
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(FetchJwtsviDsResponse { svids }))
    }

    async fn subscribe_to_jwt_bundles(
        &self,
        request: Request<SubscribeToJwtBundlesRequest>,
    ) -> Result<Response<Self::SubscribeToJWTBundlesStream>, Status> {
        let delegate = self.authorize(&request)?;
        let stream = follow(self.issuer.clone(), move |issuer| {
            delegate.check(issuer)?;
            let authority = issuer.authority();
            Ok(SubscribeToJwtBundlesResponse {
                bundles: HashMap::from([(
                    format!("spiffe://{}", authority.trust_domain()),
                    authority.jwks(),
                )]),
            })
        })?;
        Ok(Response::new(stream))
    }
}
