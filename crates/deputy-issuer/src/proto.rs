//! Generated protobuf and gRPC code, with hand-written `Debug` for messages holding secrets.
#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// The SPIFFE Workload API (`workload.proto` has no package: its services live at the root).
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// SPIRE's API types and the agent's Delegated Identity API.
pub mod spire {
    pub mod api {
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.rs"));
        }
        pub mod agent {
            pub mod delegatedidentity {
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/spire.api.agent.delegatedidentity.v1.rs"
                    ));
                }
            }
        }
    }
}

use std::fmt;

macro_rules! redacted_debug {
    ($ty:ty, $name:literal, [$($field:ident),*], [$($secret:ident),*]) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($name)
                    $(.field(stringify!($field), &self.$field))*
                    $(.field(stringify!($secret), &format_args!("<redacted {} bytes>", self.$secret.len())))*
                    .finish()
            }
        }
    };
}

redacted_debug!(
    workload::X509svid,
    "X509SVID",
    [spiffe_id, hint],
    [x509_svid_key]
);
redacted_debug!(workload::Jwtsvid, "JWTSVID", [spiffe_id, hint], [svid]);
redacted_debug!(workload::X509svidResponse, "X509SVIDResponse", [svids], []);
redacted_debug!(workload::JwtsvidResponse, "JWTSVIDResponse", [svids], []);
redacted_debug!(
    workload::ValidateJwtsvidRequest,
    "ValidateJWTSVIDRequest",
    [audience],
    [svid]
);
redacted_debug!(
    spire::api::types::Jwtsvid,
    "JWTSVID",
    [id, expires_at, hint],
    [token]
);
redacted_debug!(
    spire::api::agent::delegatedidentity::v1::X509svidWithKey,
    "X509SVIDWithKey",
    [x509_svid],
    [x509_svid_key]
);
redacted_debug!(
    spire::api::agent::delegatedidentity::v1::SubscribeToX509sviDsResponse,
    "SubscribeToX509SVIDsResponse",
    [x509_svids, federates_with],
    []
);
redacted_debug!(
    spire::api::agent::delegatedidentity::v1::FetchJwtsviDsResponse,
    "FetchJWTSVIDsResponse",
    [svids],
    []
);
