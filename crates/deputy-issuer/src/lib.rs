//! Deputy's embedded SPIFFE issuer: the development default and the test double for a SPIRE
//! agent.
//!
//! It serves the two APIs deputyd consumes, on unix sockets, from an embedded CA:
//! - the SPIFFE Workload API ([`workload_api`]), to any local process that a registration
//!   entry matches;
//! - SPIRE's Delegated Identity API ([`delegated_api`]), to authorized delegates only.
//!
//! Callers are attested from the kernel's view of the socket peer ([`attest`]); entries and
//! delegates come from a TOML file ([`entries`]); SVIDs are minted by [`authority`], cached
//! and rotated at half-life by [`svids`].

pub mod attest;
pub mod authority;
pub mod delegated_api;
pub mod entries;
mod h2_filter;
pub mod proto;
pub mod server;
mod streaming;
pub mod svids;
pub mod workload_api;

pub use authority::{Authority, AuthorityError};
pub use entries::{EntriesError, Registry};
pub use server::{IssuerConfig, IssuerError, RunningIssuer};
pub use svids::Issuer;

#[cfg(feature = "testing")]
pub mod testing;
