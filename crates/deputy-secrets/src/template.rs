//! Values with credentials in them: `Bearer {{ secret.crm.token }}`.
//!
//! A template is parsed when the configuration loads (an unknown secret, a stray brace or an
//! empty field name is refused then, not at the first call) and rendered per call from the
//! [`CredentialStore`]; a render whose credential is missing fails, so nothing is ever sent with
//! a hole where the credential should be.

use std::sync::Arc;

use crate::secret::{Credential, SecretString};
use crate::store::CredentialStore;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field { secret: String, field: String },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The secret has no working credential now.
    #[error("secret {0:?} has no working credential now")]
    Unavailable(String),
    /// The credential has no such field.
    #[error("secret {secret:?} has no field {field:?}")]
    NoField {
        /// The secret.
        secret: String,
        /// The field asked for.
        field: String,
    },
}

impl Template {
    /// Parses `text`: literal text with `{{ secret.NAME.FIELD }}` placeholders.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                let text_part = &rest[..start];
                if text_part.contains("}}") {
                    return Err(format!("{text:?}: a }}}} has no {{{{"));
                }
                parts.push(Part::Text(text_part.to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("{text:?}: a {{{{ is not closed by }}}}"))?;
            let inner = after[..end].trim();
            let mut words = inner.split('.');
            let (Some("secret"), Some(secret), Some(field), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(format!(
                    "{text:?}: {{{{ {inner} }}}} is not of the form {{{{ secret.NAME.FIELD }}}}"
                ));
            };
            if secret.is_empty() || field.is_empty() {
                return Err(format!(
                    "{text:?}: {{{{ {inner} }}}} names no secret or field"
                ));
            }
            parts.push(Part::Field {
                secret: secret.to_owned(),
                field: field.to_owned(),
            });
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("{text:?}: a }}}} has no {{{{"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field { .. })) {
            return Err(format!(
                "{text:?} uses no secret; write {{{{ secret.NAME.FIELD }}}} where the credential goes"
            ));
        }
        Ok(Self { parts })
    }

    /// The secrets the template reads.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field { secret, .. } => Some(secret.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The value for `agent`, from its current credentials.
    pub fn render(
        &self,
        store: &CredentialStore,
        agent: &str,
    ) -> Result<SecretString, RenderError> {
        self.render_with(|secret| store.get(agent, secret))
    }

    /// The value, with each secret's credential from `credential` (a task's own, say).
    pub fn render_with(
        &self,
        credential: impl Fn(&str) -> Option<Arc<Credential>>,
    ) -> Result<SecretString, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field { secret, field } => {
                    let credential = credential(secret)
                        .ok_or_else(|| RenderError::Unavailable(secret.clone()))?;
                    let value = credential
                        .field(field)
                        .ok_or_else(|| RenderError::NoField {
                            secret: secret.clone(),
                            field: field.clone(),
                        })?;
                    out.push_str(value.expose());
                }
            }
        }
        Ok(SecretString::new(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{AgentSecrets, SecretSpec, Source};

    #[test]
    fn placeholders_parse_and_render() {
        let template = Template::parse("Bearer {{ secret.crm.token }}").expect("parses");
        assert_eq!(template.secrets().collect::<Vec<_>>(), ["crm"]);
        let store = CredentialStore::new(&[AgentSecrets {
            agent: "a".into(),
            role: "a".into(),
            secrets: vec![SecretSpec {
                name: "crm".into(),
                per_task: false,
                source: Source::Kv {
                    mount: "secret".into(),
                    path: "crm".into(),
                    refresh: std::time::Duration::from_secs(60),
                },
            }],
        }]);
        assert_eq!(
            template.render(&store, "a"),
            Err(RenderError::Unavailable("crm".into()))
        );
        store.publish(
            "a",
            "crm",
            Some(Arc::new(Credential {
                fields: BTreeMap::from([("token".to_owned(), SecretString::new("t0k"))]),
                expires_at: None,
                generation: 1,
            })),
        );
        assert_eq!(
            template.render(&store, "a").expect("renders").expose(),
            "Bearer t0k"
        );
        let other = Template::parse("{{secret.crm.nope}}").expect("parses");
        assert!(matches!(
            other.render(&store, "a"),
            Err(RenderError::NoField { .. })
        ));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "Bearer {{ secret.crm.token",
            "Bearer {{ crm.token }}",
            "Bearer {{ secret.crm }}",
            "{{ secret..token }}",
            "plain text",
            "x }} y {{ secret.a.b }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
