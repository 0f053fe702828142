//! Media type parameters as RFC 9110 (section 5.6.6) writes them, read strictly: servers read
//! `charset` in ways that differ (whitespace around `=`, quoted values, the last of several), so
//! deputyd reads a JSON body's parameters exactly and refuses what it cannot read one way.

/// The parameters after a media type (`; charset=utf-8; a="x;y"`), as (lower-cased name, value
/// unquoted). Refuses anything that is not `name=token` or `name="quoted string"`.
pub(crate) fn parameters(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let Some(after) = rest.strip_prefix(';') else {
            return if rest.is_empty() {
                Ok(out)
            } else {
                Err(format!(
                    "unexpected {rest:?} in the media type's parameters"
                ))
            };
        };
        rest = after.trim_start_matches([' ', '\t']);
        if rest.is_empty() || rest.starts_with(';') {
            continue; // an empty parameter, which RFC 9110 allows
        }
        let name_end = rest.find(|c: char| !is_token(c)).unwrap_or(rest.len());
        let name = &rest[..name_end];
        let Some(value_text) = rest[name_end..].strip_prefix('=') else {
            return Err(format!(
                "parameter {name:?} is not written name=value (no space around '=')"
            ));
        };
        if name.is_empty() {
            return Err("a parameter has no name".into());
        }
        let (value, after_value) = match value_text.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = value_text
                    .find(|c: char| !is_token(c))
                    .unwrap_or(value_text.len());
                if end == 0 {
                    return Err(format!("parameter {name:?} has no value"));
                }
                (value_text[..end].to_owned(), &value_text[end..])
            }
        };
        out.push((name.to_ascii_lowercase(), value));
        rest = after_value;
    }
}

/// A quoted-string's content after its opening quote: the value and what follows the closing
/// quote.
fn unquote(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("a quoted parameter value is not closed".into())
}

/// RFC 9110 `tchar`.
fn is_token(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_exactly() {
        assert_eq!(parameters(""), Ok(vec![]));
        assert_eq!(
            parameters("; charset=UTF-8 ;; a=\"x;charset=utf-8\""),
            Ok(vec![
                ("charset".into(), "UTF-8".into()),
                ("a".into(), "x;charset=utf-8".into()),
            ])
        );
        assert_eq!(
            parameters("; q=\"a\\\"b\""),
            Ok(vec![("q".into(), "a\"b".into())])
        );
        for refused in [
            "; charset =utf-7",
            "; charset= utf-7",
            "; charset",
            "; =utf-8",
            "; a=\"open",
            "; a=b c",
            "junk",
        ] {
            assert!(parameters(refused).is_err(), "{refused:?}");
        }
    }
}
