//! The secrets manager, wired to the identity manager: JWT-SVIDs through the Delegated Identity
//! API, and each agent's X.509-SVID watch (a rotation logs in again).

use std::collections::HashMap;
use std::sync::Arc;

use deputy_identity::IdentityManager;
use deputy_secrets::{JwtSvids, SecretString, SecretsManager, Vault};
use futures::future::BoxFuture;

use crate::secrets_config::SecretsConfig;

struct FromIdentities(Arc<IdentityManager>);

impl JwtSvids for FromIdentities {
    fn fetch<'a>(
        &'a self,
        agent: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, String>> {
        Box::pin(async move {
            self.0
                .fetch_jwt_svid(agent, audience)
                .await
                .map(SecretString::new)
        })
    }
}

/// Starts obtaining every agent's secrets.
pub fn start(
    config: &SecretsConfig,
    identities: &Arc<IdentityManager>,
    backoff: (std::time::Duration, std::time::Duration),
) -> anyhow::Result<SecretsManager> {
    let vault = Vault::new(config.vault.clone()).map_err(|e| {
        anyhow::anyhow!(
            "cannot make a Vault client for {}: {e}",
            config.vault.address
        )
    })?;
    let svids: HashMap<_, _> = config
        .agents
        .iter()
        .filter_map(|a| {
            identities
                .agent(&a.agent)
                .map(|h| (a.agent.clone(), h.material.clone()))
        })
        .collect();
    tracing::info!(vault = %config.vault.address, agents = config.agents.len(),
        "obtaining the agents' secrets from Vault");
    Ok(SecretsManager::start(
        vault,
        config.agents.clone(),
        config.files.clone(),
        Arc::new(FromIdentities(identities.clone())),
        svids,
        backoff,
    ))
}
