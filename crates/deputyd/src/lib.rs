//! deputyd, the per-node Deputy daemon.
//!
//! - [`config`]: the TOML config, validated in one step that reports every problem at once;
//!   [`agent_config`]: its `[[agent]]` sections; [`admission_config`]: what is served without
//!   a policy; [`policy_config`]: its `[policy]` section; [`limits_config`]: its `[limits]`;
//!   [`secrets_config`]: `[vault]` and the agents' secrets and injected headers;
//!   [`pgproxy_config`]: their PostgreSQL auth proxies; [`services_config`]: `[[service]]`
//!   and `[[external]]`; [`approvals_config`]: `[approvals]`; [`audit_config`]: `[audit]`.
//! - [`operator`]: the operator socket, where approvals are decided and revocations made.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/status` and `/connections` on the admin
//!   listener.
//! - [`systemd`]: READY=1, STATUS= and watchdog pings when run by systemd.
//! - [`secrets`]: the secrets manager's wiring to the identity manager.
//! - [`handover`]: an upgrade's restart that refuses no connection.
//! - [`clock`]: steps of the wall clock, which decides which links are valid, noticed and told.
//! - [`daemon`]: the wiring, and the orderly shutdown on SIGTERM; [`logging`]: the log,
//!   queued off the request path.

pub mod admin;
pub mod admission_config;
pub mod agent_config;
pub mod approvals_config;
pub mod audit_config;
mod audit_events;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod handover;
pub mod limits_config;
pub mod logging;
pub mod memory;
pub mod operator;
pub mod pgproxy_config;
pub mod policy_config;
pub mod sandbox;
pub mod secrets;
pub mod secrets_config;
pub mod services_config;
pub mod systemd;

pub use config::{Config, ConfigError};
pub use daemon::{Args, Daemon, Stopped, run, run_with};
pub use logging::init_logging;
