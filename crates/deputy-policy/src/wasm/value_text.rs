//! OPA's value text, as `opa_value_dump` writes it and `opa_value_parse` reads it: JSON with set
//! literals (`{1, 2}`, `set()`) and object keys of any type (`{1: "one"}`).
//!
//! Builtin arguments cross the wasm boundary in this form rather than as JSON because JSON
//! turns sets into arrays, and a builtin may tell them apart (`sprintf("%v", [s])` prints a set
//! as `{"a", "b"}` in OPA).

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;

/// How deeply values may nest, as serde_json allows: parsing and writing recurse on the host's
/// own stack, which wasmtime's limits do not guard, and a policy may build a deep value from
/// attacker text (`json.unmarshal` of a header) before handing it to a builtin.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a text is not an OPA value.
#[derive(Debug, thiserror::Error)]
#[error("the module wrote an unreadable value at byte {at}: {what}")]
pub(crate) struct ParseError {
    at: usize,
    what: &'static str,
}

/// A value too deep to hand back to the module.
#[derive(Debug, thiserror::Error)]
#[error("a builtin's result nests deeper than {MAX_DEPTH} levels")]
pub(crate) struct TooDeep;

/// `text` as a value.
pub(crate) fn parse(text: &str) -> Result<Value, ParseError> {
    let mut parser = Parser {
        text,
        at: 0,
        depth: 0,
    };
    let value = parser.value()?;
    parser.skip_space();
    if parser.at != text.len() {
        return Err(parser.error("text after the value"));
    }
    Ok(value)
}

/// `value` as text `opa_value_parse` reads back; `None` for undefined (anywhere inside too).
pub(crate) fn write(value: &Value) -> Result<Option<String>, TooDeep> {
    let mut out = String::new();
    Ok(write_into(value, &mut out, 0)?.then_some(out))
}

/// Writes `value`, found at nesting `depth`; `Ok(false)` when it is undefined.
fn write_into(value: &Value, out: &mut String, depth: usize) -> Result<bool, TooDeep> {
    let inner = depth + 1;
    if inner > MAX_DEPTH && matches!(value, Value::Array(_) | Value::Set(_) | Value::Object(_)) {
        return Err(TooDeep);
    }
    match value {
        Value::Undefined => return Ok(false),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            match serde_json::to_string(value) {
                Ok(text) => out.push_str(&text),
                Err(_) => return Ok(false),
            }
        }
        Value::Array(items) => return write_sequence(items.iter(), ('[', ']'), out, inner),
        Value::Set(items) if items.is_empty() => out.push_str("set()"),
        Value::Set(items) => return write_sequence(items.iter(), ('{', '}'), out, inner),
        Value::Object(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !write_into(key, out, inner)? {
                    return Ok(false);
                }
                out.push(':');
                if !write_into(item, out, inner)? {
                    return Ok(false);
                }
            }
            out.push('}');
        }
    }
    Ok(true)
}

/// The elements of an array or set between `brackets`, found at nesting `depth`.
fn write_sequence<'v>(
    items: impl Iterator<Item = &'v Value>,
    (open, close): (char, char),
    out: &mut String,
    depth: usize,
) -> Result<bool, TooDeep> {
    out.push(open);
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !write_into(item, out, depth)? {
            return Ok(false);
        }
    }
    out.push(close);
    Ok(true)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { at: self.at, what }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.as_bytes().get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error("a missing delimiter"))
        }
    }

    fn keyword(&mut self, word: &str, value: Value) -> Result<Value, ParseError> {
        if self.rest().starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("an unknown word"))
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.error("the text ends before a value")),
            Some(b'n') => self.keyword("null", Value::Null),
            Some(b't') => self.keyword("true", Value::Bool(true)),
            Some(b'f') => self.keyword("false", Value::Bool(false)),
            Some(b's') => self.keyword("set()", Value::from(BTreeSet::new())),
            Some(b'"') => self.string(),
            Some(b'[' | b'{') if self.depth >= MAX_DEPTH => {
                Err(self.error("values nested deeper than 128 levels"))
            }
            Some(b'[') => self.nested(Self::array),
            Some(b'{') => self.nested(Self::object_or_set),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("an unexpected character")),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Value, ParseError>,
    ) -> Result<Value, ParseError> {
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn string(&mut self) -> Result<Value, ParseError> {
        // The end of the string: the first quote not escaped.
        let bytes = self.text.as_bytes();
        let mut end = self.at + 1;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        if end >= bytes.len() {
            return Err(self.error("an unterminated string"));
        }
        let literal = &self.text[self.at..=end];
        let decoded: String =
            serde_json::from_str(literal).map_err(|_| self.error("a bad string escape"))?;
        self.at = end + 1;
        Ok(Value::from(decoded))
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'))
            .unwrap_or(rest.len());
        let number = Value::from_numeric_string(&rest[..len])
            .map_err(|_| self.error("a malformed number"))?;
        self.at += len;
        Ok(number)
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::from(items));
        }
        loop {
            items.push(self.value()?);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::from(items));
                }
                _ => return Err(self.error("an array without `,` or `]`")),
            }
        }
    }

    /// `{}` is an empty object; after the first element, a `:` says object, else it is a set.
    fn object_or_set(&mut self) -> Result<Value, ParseError> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::from(BTreeMap::new()));
        }
        let first = self.value()?;
        if self.peek() != Some(b':') {
            let mut set = BTreeSet::from([first]);
            loop {
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        return Ok(Value::from(set));
                    }
                    _ => return Err(self.error("a set without `,` or `}`")),
                }
                set.insert(self.value()?);
            }
        }
        let mut fields = BTreeMap::new();
        let mut key = first;
        loop {
            self.expect(b':')?;
            fields.insert(key, self.value()?);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::from(fields));
                }
                _ => return Err(self.error("an object without `,` or `}`")),
            }
            key = self.value()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_objects_and_scalars_survive_a_round_trip() {
        for text in [
            r#"{"a": [1, 2.5, -3e2], "b": {1: "one", "x": set()}, "c": {"s", "t"}}"#,
            r#"["esc\"aped \\ \u00e9", null, true, false, {}]"#,
            "{[1, 2], {3}}",
        ] {
            let value = parse(text).expect(text);
            let written = write(&value).expect("shallow").expect("defined");
            assert_eq!(
                parse(&written).expect(&written),
                value,
                "{text} -> {written}"
            );
        }
        let set = parse(r#"{"b", "a"}"#).expect("set");
        assert!(set.as_set().is_ok(), "{set:?}");
        assert!(parse("{}").expect("object").as_object().is_ok());
    }

    #[test]
    fn damaged_text_is_an_error_and_undefined_is_not_written() {
        for text in ["", "[1,", "{\"a\" 1}", "nul", "\"open", "1 2", "{1, 2: 3}"] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(
            write(&Value::from(vec![Value::Undefined])).expect("shallow"),
            None
        );
        // Deep values are refused both ways, not followed down the host's stack.
        let deep = "[".repeat(100_000);
        assert!(parse(&deep).is_err());
        let mut value = Value::from(Vec::<Value>::new());
        for _ in 0..MAX_DEPTH {
            value = Value::from(vec![value]);
        }
        assert!(write(&value).is_err());
        assert!(
            parse(
                &"[".repeat(MAX_DEPTH)
                    .chars()
                    .chain("]".repeat(MAX_DEPTH).chars())
                    .collect::<String>()
            )
            .is_ok()
        );
    }
}
