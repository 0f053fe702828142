//! Scopes: `:`-separated segments, where a parent covers a child of the same length whose every
//! segment equals the parent's or sits under a parent `*` (`tickets:*` covers `tickets:read`).

/// Whether `parent` covers `child`.
pub fn covers(parent: &str, child: &str) -> bool {
    let (parent, child): (Vec<&str>, Vec<&str>) =
        (parent.split(':').collect(), child.split(':').collect());
    parent.len() == child.len() && parent.iter().zip(&child).all(|(p, c)| *p == "*" || p == c)
}

/// The first scope of `child` that no scope of `parent` covers, if any.
pub fn first_uncovered<'a>(parent: &[String], child: &'a [String]) -> Option<&'a str> {
    child
        .iter()
        .find(|c| !parent.iter().any(|p| covers(p, c)))
        .map(String::as_str)
}

/// Checks a scope's syntax: non-empty segments of letters, digits, `-`, `_`, `.`, or `*`.
pub fn check_syntax(scope: &str) -> Result<(), String> {
    let ok = !scope.is_empty()
        && scope.split(':').all(|segment| {
            segment == "*"
                || (!segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid scope {scope:?}: write segments of letters, digits, '-', '_' or '.', or '*', \
             separated by ':' (for example tickets:read)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_covers_children_of_the_same_shape() {
        for (parent, child, expected) in [
            ("tickets:*", "tickets:read", true),
            ("tickets:read", "tickets:read", true),
            ("*:read", "tickets:read", true),
            ("tickets:read", "tickets:write", false),
            ("tickets:*", "tickets", false),
            ("tickets", "tickets:read", false),
            ("tickets:read", "tickets:*", false),
            ("*", "tickets:read", false),
        ] {
            assert_eq!(covers(parent, child), expected, "{parent} covers {child}");
        }
    }

    #[test]
    fn reports_the_first_uncovered_scope() {
        let parent = vec!["tickets:*".to_owned(), "users:read".to_owned()];
        let child = vec!["tickets:read".to_owned(), "users:write".to_owned()];
        assert_eq!(first_uncovered(&parent, &child), Some("users:write"));
        assert_eq!(first_uncovered(&parent, &child[..1]), None);
    }

    #[test]
    fn scope_syntax() {
        assert!(check_syntax("tickets:read").is_ok());
        assert!(check_syntax("tickets:*").is_ok());
        for bad in ["", "tickets:", ":read", "tick ets", "a:b*"] {
            assert!(check_syntax(bad).is_err(), "{bad:?}");
        }
    }
}
