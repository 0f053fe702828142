//! Each agent's `[[agent.postgres]]`: a PostgreSQL auth proxy the agent connects to with no
//! password, deputyd logging in with the agent's database secret.
//!
//! ```toml
//! [[agent.postgres]]
//! listen = "unix:///run/deputy/triage-tickets.sock"   # or 127.0.0.1:PORT
//! upstream = "127.0.0.1:5432"                          # or unix:///run/postgresql/.s.PGSQL.5432
//! database = "tickets"
//! secret = "tickets"                                    # a database secret of the agent
//! ```

use deputy_pgproxy::{PgProxyConfig, PgUpstream};
use deputy_secrets::{AgentSecrets, Source};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPostgres {
    listen: String,
    upstream: String,
    database: String,
    secret: String,
}

/// Validates one agent's PostgreSQL proxies against its secrets.
pub(crate) fn validate(
    agent: &str,
    uids: &[u32],
    raw: &[RawPostgres],
    secrets: Option<&AgentSecrets>,
    at: &str,
    problems: &mut Vec<String>,
) -> Vec<PgProxyConfig> {
    let mut proxies = Vec::new();
    for (i, proxy) in raw.iter().enumerate() {
        let here = format!("{at}: postgres[{i}] (database {:?})", proxy.database);
        if uids.is_empty() {
            problems.push(format!(
                "{here}: uids is empty, so no process could use the proxy; list the uids the \
                 agent runs as"
            ));
        }
        let declared = secrets
            .and_then(|s| s.secrets.iter().find(|s| s.name == proxy.secret))
            .map(|s| &s.source);
        match declared {
            Some(Source::Database { .. }) => {}
            Some(_) => problems.push(format!(
                "{here}: secret {:?} is not a database secret; give one with database = {{ role \
                 = \"...\" }}",
                proxy.secret
            )),
            None => problems.push(format!(
                "{here}: the agent declares no secret {:?}; add an [[agent.secret]] with \
                 database = {{ role = \"...\" }}",
                proxy.secret
            )),
        }
        if proxy.database.is_empty() {
            problems.push(format!(
                "{here}: database must name the database sessions open on"
            ));
        }
        let listen = crate::agent_config::parse_local_listen(&proxy.listen)
            .map_err(|e| problems.push(format!("{here}: listen = {:?}: {e}", proxy.listen)))
            .ok();
        let upstream = match proxy.upstream.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Some(PgUpstream::Unix(path.into())),
            Some(_) => {
                problems.push(format!(
                    "{here}: upstream {:?}: write an absolute socket path, such as \
                     unix:///run/postgresql/.s.PGSQL.5432",
                    proxy.upstream
                ));
                None
            }
            None if proxy
                .upstream
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                let host = proxy.upstream.rsplit_once(':').map_or("", |(h, _)| h);
                let loopback = host == "localhost"
                    || host
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    // Without TLS a session (and a relayed SCRAM exchange) crosses the network
                    // in the clear.
                    problems.push(format!(
                        "{here}: upstream {:?} is not on loopback, and the proxy does not speak \
                         PostgreSQL's TLS yet; run deputyd on the database's host, or use \
                         unix:///PATH/.s.PGSQL.PORT",
                        proxy.upstream
                    ));
                }
                Some(PgUpstream::Tcp(proxy.upstream.clone()))
            }
            None => {
                problems.push(format!(
                    "{here}: upstream {:?}: write HOST:PORT or unix:///PATH/.s.PGSQL.PORT",
                    proxy.upstream
                ));
                None
            }
        };
        if let (Some(listen), Some(upstream)) = (listen, upstream) {
            proxies.push(PgProxyConfig {
                agent: agent.to_owned(),
                uids: uids.to_vec(),
                listen,
                upstream,
                database: proxy.database.clone(),
                secret: proxy.secret.clone(),
            });
        }
    }
    proxies
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(upstream: &str, secret: &str) -> String {
        format!(
            "trust_domain = \"example.org\"\n[[agent]]\nname = \"triage\"\n\
             spiffe_id = \"spiffe://example.org/agent/triage\"\nuids = [1001]\n\
             [[agent.secret]]\nname = \"db\"\ndatabase = {{ role = \"ro\" }}\n\
             [[agent.secret]]\nname = \"crm\"\nkv = {{ path = \"crm\" }}\n\
             [[agent.postgres]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
             database = \"appdb\"\nsecret = \"{secret}\"\n\
             [vault]\naddress = \"http://127.0.0.1:8200\"\n"
        )
    }

    #[test]
    fn a_proxy_needs_a_database_secret_and_a_local_upstream() {
        let ok = Config::parse(&config("127.0.0.1:5432", "db"), "deputyd.toml").expect("valid");
        assert_eq!(ok.postgres.len(), 1);
        let unix = config("unix:///run/postgresql/.s.PGSQL.5432", "db");
        assert!(Config::parse(&unix, "deputyd.toml").is_ok());
        for (upstream, secret, expected) in [
            ("10.0.0.7:5432", "db", "not on loopback"),
            ("127.0.0.1:5432", "crm", "not a database secret"),
            ("127.0.0.1:5432", "nope", "declares no secret"),
            ("unix://relative", "db", "absolute socket path"),
            ("nohost", "db", "HOST:PORT"),
        ] {
            let message = Config::parse(&config(upstream, secret), "deputyd.toml")
                .expect_err("invalid")
                .to_string();
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
    }
}
