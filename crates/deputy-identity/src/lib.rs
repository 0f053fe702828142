//! SPIFFE identities for Deputy.
//!
//! - [`spiffe_id`]: the SPIFFE ID and selector rules every config file is checked against.
//! - [`inspect`]: why a certificate would or would not be accepted as an X.509-SVID.
//! - [`manager`]: deputyd's own SVID (Workload API) and each fronted agent's SVIDs (Delegated
//!   Identity API), each published on a `watch` of ready rustls material, with explicit states
//!   and per-identity backoff.
//! - [`jwt`]: the agents' JWT-SVIDs (to log in to Vault as them) and the JWKS document.

pub mod backoff;
pub mod inspect;
pub mod jwt;
pub mod manager;
pub mod material;
pub mod metrics;
pub mod selector;
pub mod spiffe_id;
pub mod state;
pub mod verify;

pub use manager::{AgentIdentity, IdentityManager, IdentityManagerConfig};
pub use material::{MaterialError, TlsMaterial};
pub use selector::{Selector, SelectorError};
pub use spiffe_id::{InvalidSpiffeId, parse_spiffe_id};
pub use state::{IdentityState, IdentityStatus};
pub use verify::{SvidVerifyError, TrustAnchors};
