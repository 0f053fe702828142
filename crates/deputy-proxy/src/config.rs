//! The data path's configuration, validated by deputyd before it reaches here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spiffe::SpiffeId;

/// Where an outbound listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// Loopback TCP; callers are attested by the uid owning their socket (sock_diag).
    Tcp(SocketAddr),
    /// A unix socket; callers are attested by SO_PEERCRED.
    Unix(PathBuf),
}

/// An agent on this node.
#[derive(Debug, Clone)]
pub struct LocalAgent {
    /// Its name; also the SNI other nodes use to reach it.
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Where it sends its outbound calls, if it makes any.
    pub outbound: Option<ListenAddr>,
    /// Where inbound calls for it are delivered (`http://127.0.0.1:8081`), if it serves any.
    pub upstream: Option<http::Uri>,
    /// The uids allowed to use its outbound listener.
    pub uids: Vec<u32>,
    /// Principals it may start tasks for: exact names or prefixes ending in `*` (`user:*`).
    pub originate: Vec<String>,
    /// How calls to it are read: as MCP (judged by tool and the arguments it declares) or A2A
    /// (by method and skill), whose bodies must then be readable JSON; or unmarked.
    pub protocol: deputy_policy::mcp::Protocol,
    /// Headers deputyd adds to the agent's calls, with credentials the agent never sees.
    pub inject: Vec<Injection>,
}

/// A header deputyd sets on an agent's calls to one service, after the policy allowed the call,
/// from the agent's current credentials (`Authorization: Bearer {{ secret.crm.token }}`).
#[derive(Debug, Clone)]
pub struct Injection {
    /// The service whose calls carry it.
    pub service: String,
    /// The header; one the agent sent is replaced.
    pub header: http::HeaderName,
    /// Its value.
    pub value: deputy_secrets::template::Template,
}

impl LocalAgent {
    /// Whether this agent may start a task for `principal`.
    pub fn may_originate(&self, principal: &str) -> bool {
        self.originate
            .iter()
            .any(|pattern| crate::admission::pattern_matches(pattern, principal))
    }
}

/// A service agents may call: an agent or tool of the mesh, on this node or another, or an HTTPS
/// tool outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The name agents call it by (the Host of their requests).
    pub name: String,
    /// How calls to it are read: as MCP (judged by tool and the arguments it declares) or A2A
    /// (by method and skill), whose bodies must then be readable JSON; or unmarked.
    pub protocol: deputy_policy::mcp::Protocol,
    /// Writes to it must carry an `Idempotency-Key`.
    pub require_idempotency_key: bool,
    /// How deputyd reaches it.
    pub reach: Reach,
}

/// How deputyd reaches a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Through the deputyd that fronts it, over mTLS with the calling agent's SVID.
    Mesh(MeshPeer),
    /// Directly, over HTTPS: a tool outside the mesh, which cannot verify a chain.
    External(External),
}

/// A service of the mesh: who it is and where its deputyd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    /// The SPIFFE ID its server certificate must carry.
    pub spiffe_id: SpiffeId,
    /// `host:port` of the deputyd that fronts it.
    pub address: String,
    /// `spiffe_id` as text, made once (calls name it per request).
    pub id: std::sync::Arc<str>,
}

/// A tool outside the mesh (`[[external]]`): a SaaS API, say, called with a credential deputyd
/// injects. It gets no chain (it could not verify one); it gets the task's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// `https://HOST[:PORT][/PREFIX]`: an agent's `/items` goes to `PREFIX/items`.
    pub base: http::Uri,
    /// The roots its server certificate must chain to; empty: the system's roots.
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The header carrying the task's id on every call that belongs to a task.
    pub task_header: http::HeaderName,
    /// Without a policy, the local agents that may call it (no deputyd at the other end
    /// checks the call); with one, the policy decides and this is empty.
    pub callers: Vec<String>,
}

impl Service {
    /// A service of the mesh.
    pub fn mesh(name: impl Into<String>, spiffe_id: SpiffeId, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            protocol: deputy_policy::mcp::Protocol::Unmarked,
            require_idempotency_key: false,
            reach: Reach::Mesh(MeshPeer {
                id: spiffe_id.to_string().into(),
                spiffe_id,
                address: address.into(),
            }),
        }
    }

    /// Its SPIFFE ID, if it is of the mesh.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match &self.reach {
            Reach::Mesh(peer) => Some(&peer.spiffe_id),
            Reach::External(_) => None,
        }
    }
}

/// Timeouts of the data path.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake to another deputyd.
    pub connect: Duration,
    /// From sending a request until its response headers arrive (bodies stream without limit).
    pub request: Duration,
    /// A pooled connection unused for this long is closed.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(90),
        }
    }
}

/// Bounds of the data path: how long a connection lives, how many there may be, how much memory
/// calls may hold. Over a count limit the caller gets 503 `overloaded` and others are served.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection older than this is drained (its peer reconnects, and is admitted again).
    pub max_connection_age: Duration,
    /// How long a drained connection's streams may go on (and how long SIGTERM waits for them).
    pub drain_grace: Duration,
    /// The whole TLS handshake on the inbound port, from the first byte.
    pub handshake: Duration,
    /// TLS handshakes in progress on the inbound port at once; past it a connection is closed
    /// at accept (a connection slot is taken only once the peer is authenticated).
    pub max_handshakes: usize,
    /// HTTP/2 PING interval on idle connections, both servers and the pool.
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection.
    pub keepalive_timeout: Duration,
    /// Concurrent connections per listener (the inbound one, each agent's outbound one).
    pub max_connections: usize,
    /// Concurrent requests per connection.
    pub max_streams: u32,
    /// Connections to a peer node per (agent, service) pair, each carrying up to `max_streams`
    /// requests: one pair cannot take more of a peer's inbound `max_connections` than this.
    pub max_pool_connections: usize,
    /// Request body bytes held for policy inspection across the node at once.
    pub max_inspected_bytes: usize,
}

impl Default for Limits {
    /// Sized for a 2-core node.
    fn default() -> Self {
        Self {
            max_connection_age: Duration::from_secs(3600),
            drain_grace: Duration::from_secs(10),
            handshake: Duration::from_secs(5),
            max_handshakes: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_streams: 256,
            max_pool_connections: 4,
            max_inspected_bytes: 64 << 20,
        }
    }
}

/// Everything the data path needs to know.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where other deputyd instances reach this node's agents (mTLS); `None` serves no inbound.
    pub inbound: Option<SocketAddr>,
    /// The agents on this node.
    pub agents: Vec<LocalAgent>,
    /// The services agents may call (local agents included).
    pub services: Vec<Service>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Bounds.
    pub limits: Limits,
    /// Delegation chains.
    pub delegation: Delegation,
    /// The policy every call is decided by; `None`: inbound calls are admitted by
    /// `without_policy`, and agents start tasks per their `originate` patterns.
    pub policy: Option<PolicyConfig>,
    /// How inbound calls are admitted when there is no policy (ignored with one).
    pub without_policy: crate::admission::WithoutPolicy,
    /// The agents' current credentials, which `inject` headers are rendered from.
    pub credentials: deputy_secrets::CredentialStore,
    /// Credentials issued per task (`per_task` secrets), if any agent declares one.
    pub task_secrets: Option<deputy_secrets::task::TaskSecrets>,
    /// Where calls held for a human's approval are recorded (`None`: a call that needs one is
    /// refused).
    pub approvals: Option<std::sync::Arc<deputy_state::Approvals>>,
    /// How long an approval may wait to be decided and redeemed.
    pub approval_ttl: Duration,
    /// Where a pending approval is announced, if anywhere.
    pub approval_webhook: Option<crate::webhook::ApprovalWebhook>,
    /// Where the first responses of writes with an `Idempotency-Key` are kept (`None`: keys are
    /// passed on unheeded).
    pub idempotency: Option<std::sync::Arc<deputy_state::IdempotentResponses>>,
    /// The node's revocations (`None`: nothing can be revoked).
    pub revocations: Option<std::sync::Arc<deputy_state::Revocations>>,
    /// The node's audit trail (`None`: calls are not recorded).
    pub audit: Option<std::sync::Arc<deputy_audit::Trail>>,
}

/// How the data path asks the policy.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The serving policy (reloaded in place).
    pub policy: std::sync::Arc<deputy_policy::Policy>,
    /// What the input says of identities and time (replaced in place on SIGHUP).
    pub facts: std::sync::Arc<FactsCell>,
    /// Most request body bytes held back to read an MCP call before deciding.
    pub peek_bytes: usize,
    /// Longest wait for those bytes; then the policy decides on what has arrived.
    pub peek_wait: Duration,
    /// Log each decision's whole input as well as its record (debugging; may hold secrets).
    pub log_inputs: bool,
    /// The node's bound on bytes held for inspection; [`Proxy::start`](crate::Proxy::start)
    /// puts in one sized by [`Limits::max_inspected_bytes`], shared by both listeners.
    pub held_bytes: crate::held_bytes::HeldBytes,
}

/// Configured facts a policy input carries.
#[derive(Debug, Clone)]
pub struct PolicyFacts {
    /// Attributes of SPIFFE IDs (agents, peers, services), by SPIFFE ID.
    pub attributes: std::collections::HashMap<String, deputy_policy::input::Attributes>,
    /// The zone `time.weekday` and `time.hour` are given in.
    pub time_zone: chrono_tz::Tz,
}

/// The facts in force, replaced whole: a decision sees the old set or the new, never a mix.
#[derive(Debug)]
pub struct FactsCell(std::sync::RwLock<std::sync::Arc<PolicyFacts>>);

impl FactsCell {
    /// A cell holding `facts`.
    pub fn new(facts: PolicyFacts) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(facts)))
    }

    /// The facts in force now.
    pub fn current(&self) -> std::sync::Arc<PolicyFacts> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `facts` in force for the decisions that follow.
    pub fn replace(&self, facts: PolicyFacts) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(facts);
    }
}

/// How chains are verified and how many received chains are kept.
#[derive(Debug, Clone, Copy)]
pub struct Delegation {
    /// Limits and tolerances of chain verification.
    pub verify: deputy_delegation::VerifyOptions,
    /// Most `Deputy-Context` handles held at once (each keeps its chain, a few KiB).
    pub max_contexts: usize,
    /// Most unexpired budgeted links counted at once (past it, new budgeted chains get 503).
    pub max_budgeted_links: usize,
    /// Most tasks whose onward nodes are remembered, so that a revocation of one is relayed
    /// to them (each about 1 KiB); past it the least recently used are forgotten.
    pub max_relayed_tasks: usize,
}

impl Default for Delegation {
    fn default() -> Self {
        Self {
            verify: deputy_delegation::VerifyOptions::default(),
            max_contexts: 16_384,
            max_budgeted_links: 65_536,
            max_relayed_tasks: 8_192,
        }
    }
}
