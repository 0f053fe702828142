//! Which credential a session logs in with: the agent's standing database credential, or, for a
//! secret issued per task, the credential of the task the session names. A session names its
//! task by the `Deputy-Context` handle the agent received with the call it is serving, in the
//! startup's `options` (`options='-c deputy.context=dctx_...'` in a libpq connection string):
//! the session then lives no longer than the task's chain, and is closed when the task's
//! credential is revoked.

use std::sync::Arc;

use deputy_proxy::context::TaskContexts;
use deputy_secrets::task::TaskSecrets;
use deputy_secrets::{Credential, CredentialStore};
use tokio::sync::watch;

/// The option that names a session's task.
const CONTEXT_OPTION: &str = "deputy.context";

/// Where sessions' credentials come from.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The agents' standing credentials.
    pub store: CredentialStore,
    /// Credentials issued per task, and the tasks behind context handles; `None` when no
    /// agent declares a per-task secret.
    pub tasks: Option<(TaskSecrets, TaskContexts)>,
}

/// A session's credential and what follows it (each renewal, and its withdrawal).
pub(crate) type Followed = (
    Arc<Credential>,
    Option<watch::Receiver<Option<Arc<Credential>>>>,
);

impl Credentials {
    /// The credential a session of `agent` through a proxy of `secret` logs in with, given the
    /// context handle its startup named, if any.
    pub(crate) async fn for_session(
        &self,
        agent: &str,
        secret: &str,
        context: Option<&str>,
    ) -> Result<Followed, String> {
        if let Some((tasks, contexts)) = &self.tasks
            && tasks.is_per_task(agent, secret)
        {
            let handle = context.ok_or_else(|| {
                format!(
                    "secret {secret:?} is issued per task: name the task this session serves \
                     with options='-c {CONTEXT_OPTION}=HANDLE', HANDLE being the Deputy-Context \
                     of the call the agent is serving"
                )
            })?;
            let (task, until) = contexts.resolve(agent, handle)?;
            let credential = tasks.credential(agent, &task, secret, until).await?;
            return Ok((credential, tasks.watch(agent, &task, secret)));
        }
        let credential = self.store.get(agent, secret).ok_or_else(|| {
            format!(
                "deputyd holds no working credential for agent {agent}'s secret {secret:?} now \
                 (Vault has not issued it, or it lapsed); see the secrets on deputyd's /status"
            )
        })?;
        Ok((credential, self.store.watch(agent, secret)))
    }
}

/// Takes `-c deputy.context=HANDLE` (or `--deputy.context=HANDLE`) out of the startup's
/// `options`, which then goes to PostgreSQL without it; returns the handle.
pub(crate) fn take_context(
    parameters: &mut Vec<(String, String)>,
) -> Result<Option<String>, String> {
    let Some(index) = parameters.iter().position(|(k, _)| k == "options") else {
        return Ok(None);
    };
    let words: Vec<&str> = parameters[index].1.split_ascii_whitespace().collect();
    let mut kept: Vec<&str> = Vec::with_capacity(words.len());
    let mut handle = None;
    let mut i = 0;
    while i < words.len() {
        let (setting, used) = match words[i] {
            "-c" => (words.get(i + 1).copied(), 2),
            word => (
                word.strip_prefix("--")
                    .or_else(|| word.strip_prefix("-c"))
                    .filter(|_| word != "-c"),
                1,
            ),
        };
        match setting.and_then(|s| s.strip_prefix(CONTEXT_OPTION)) {
            Some(rest) => {
                let value = rest.strip_prefix('=').ok_or_else(|| {
                    format!("options: write {CONTEXT_OPTION}=HANDLE (the Deputy-Context handle)")
                })?;
                if handle.replace(value.to_owned()).is_some() {
                    return Err(format!("options name {CONTEXT_OPTION} twice"));
                }
            }
            None => kept.extend(&words[i..(i + used).min(words.len())]),
        }
        i += used;
    }
    if kept.is_empty() {
        parameters.remove(index);
    } else {
        parameters[index].1 = kept.join(" ");
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(value: &str) -> Vec<(String, String)> {
        vec![
            ("user".into(), "x".into()),
            ("options".into(), value.into()),
        ]
    }

    #[test]
    fn the_context_is_taken_out_of_the_options_and_the_rest_kept() {
        let mut params = options("-c deputy.context=dctx_abc");
        assert_eq!(take_context(&mut params), Ok(Some("dctx_abc".into())));
        assert_eq!(params, [("user".to_owned(), "x".to_owned())]);

        let mut params = options("-c search_path=app --deputy.context=dctx_x -cwork_mem=4MB");
        assert_eq!(take_context(&mut params), Ok(Some("dctx_x".into())));
        assert_eq!(params[1].1, "-c search_path=app -cwork_mem=4MB");

        let mut params = options("-c search_path=app");
        assert_eq!(take_context(&mut params), Ok(None));
        assert_eq!(params[1].1, "-c search_path=app");
    }

    #[test]
    fn a_context_named_twice_or_without_a_value_is_refused() {
        let mut twice = options("-c deputy.context=a -c deputy.context=b");
        assert!(
            take_context(&mut twice)
                .expect_err("refused")
                .contains("twice")
        );
        let mut bare = options("-c deputy.context");
        assert!(take_context(&mut bare).is_err());
    }
}
