//! The Workload API endpoint a command talks to.

/// `SPIFFE_ENDPOINT_SOCKET` names it, as for every SPIFFE client; a bare path is a unix socket.
pub(crate) const DEFAULT: &str = "unix:///run/spire/agent/public/api.sock";

/// A SPIFFE endpoint URI from a flag that may also be a bare socket path.
pub(crate) fn normalize(socket: &str) -> String {
    if socket.starts_with('/') {
        format!("unix://{socket}")
    } else {
        socket.to_owned()
    }
}

/// Connects a Workload API client, explaining what to check when it fails.
pub(crate) async fn connect(socket: &str) -> anyhow::Result<spiffe::WorkloadApiClient> {
    let endpoint = normalize(socket);
    spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the Workload API at {endpoint}: {e}; is a SPIRE agent or \
                 `deputy issuer` listening there? (set --socket or SPIFFE_ENDPOINT_SOCKET)"
            )
        })
}

/// Adds what to do to the Workload API's terse "no identity issued".
pub(crate) fn explain(error: spiffe::WorkloadApiError) -> anyhow::Error {
    match error {
        spiffe::WorkloadApiError::NoIdentityIssued => anyhow::anyhow!(
            "no identity issued: no registration entry matches this process (uid {}), or the \
             entries it matches are delegated-only; register it (an [[entry]] in the issuer's \
             entries file, or spire-server entry create). An agent fronted by deputyd gets \
             nothing here by design: only deputyd obtains its SVID (deputy:agent:NAME), and the \
             agent calls through deputyd's outbound listener",
            nix::unistd::geteuid()
        ),
        other => other.into(),
    }
}
