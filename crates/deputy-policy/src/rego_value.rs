//! The input document written straight into a regorus value.
//!
//! regorus reads JSON text by interning every object key in a hash table; for a one-kilobyte
//! input that parse was a third of a whole decision on the shipped policy. Serializing the typed
//! input into regorus's value skips the text and the table. The JSON text is still built once,
//! for the size check and the decision log; a test checks both forms give the same value.

use std::collections::BTreeMap;

use regorus::Value;
use serde::ser::{self, Impossible, Serialize};

/// Why a value has no regorus form (only shapes the input document never has).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ToValueError(String);

impl ser::Error for ToValueError {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

/// `value` as a regorus value: what `Value::from_json_str(&serde_json::to_string(value)?)`
/// gives, without the text.
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ToValueError> {
    value.serialize(ToValue)
}

struct ToValue;

fn unsupported(kind: &str) -> ToValueError {
    ToValueError(format!(
        "a {kind} has no JSON form a policy can read as input"
    ))
}

impl ser::Serializer for ToValue {
    type Ok = Value;
    type Error = ToValueError;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Impossible<Value, ToValueError>;
    type SerializeTupleVariant = Impossible<Value, ToValueError>;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Impossible<Value, ToValueError>;

    fn serialize_bool(self, v: bool) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ToValueError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ToValueError> {
        // JSON has no NaN or infinity; serde_json writes them as null.
        Ok(if v.is_finite() {
            Value::from(v)
        } else {
            Value::Null
        })
    }
    fn serialize_char(self, v: char) -> Result<Value, ToValueError> {
        Ok(Value::from(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, ToValueError> {
        Err(unsupported("byte string"))
    }
    fn serialize_none(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, ToValueError> {
        Ok(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        let mut map = BTreeMap::new();
        map.insert(Value::from(variant), value.serialize(ToValue)?);
        Ok(Value::from(map))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, ToValueError> {
        Ok(Seq(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, ToValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ToValueError> {
        Err(unsupported("tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ToValueError> {
        Err(unsupported("tuple variant"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map, ToValueError> {
        Ok(Map::default())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Map, ToValueError> {
        Ok(Map::default())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ToValueError> {
        Err(unsupported("struct variant"))
    }
}

struct Seq(Vec<Value>);

impl ser::SerializeSeq for Seq {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.0.push(value.serialize(ToValue)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.0))
    }
}

impl ser::SerializeTuple for Seq {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ToValueError> {
        ser::SerializeSeq::end(self)
    }
}

#[derive(Default)]
struct Map {
    entries: BTreeMap<Value, Value>,
    key: Option<Value>,
}

impl ser::SerializeMap for Map {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ToValueError> {
        match key.serialize(ToValue)? {
            // JSON object keys are strings.
            key @ Value::String(_) => {
                self.key = Some(key);
                Ok(())
            }
            _ => Err(unsupported("map key that is not a string")),
        }
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ToValueError("a map value came without its key".into()))?;
        self.entries.insert(key, value.serialize(ToValue)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

impl ser::SerializeStruct for Map {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), ToValueError> {
        self.entries
            .insert(Value::from(name), value.serialize(ToValue)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> Vec<(String, serde_json::Value)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cases");
        let mut cases = Vec::new();
        for entry in std::fs::read_dir(dir).expect("cases") {
            let path = entry.expect("entry").path();
            let case: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            cases.push((path.display().to_string(), case["input"].clone()));
        }
        assert!(cases.len() > 5, "the decision cases are where they were");
        cases
    }

    #[test]
    fn the_typed_input_becomes_the_value_its_json_text_parses_to() {
        for (name, input) in cases() {
            let typed: crate::PolicyInput = serde_json::from_value(input).expect(&name);
            let text = serde_json::to_string(&typed).expect("json");
            let parsed = Value::from_json_str(&text).expect("parses");
            assert_eq!(to_value(&typed).expect("converts"), parsed, "{name}");
        }
    }

    #[test]
    fn numbers_strings_and_nesting_match_the_json_reading() {
        let value = serde_json::json!({
            "n": -3, "big": u64::MAX, "f": 1.5, "s": "ſ\u{0}\"", "none": null, "t": true,
            "list": [1, [2, {"k": "v"}]], "empty": {}, "nothing": [],
        });
        let parsed = Value::from_json_str(&value.to_string()).expect("parses");
        assert_eq!(to_value(&value).expect("converts"), parsed);
    }

    #[test]
    fn shapes_without_a_json_form_are_refused() {
        let mut keyed = BTreeMap::new();
        keyed.insert(1u8, "one");
        assert!(to_value(&keyed).is_err());
        assert!(to_value(serde_bytes_like()).is_err());
    }

    fn serde_bytes_like() -> &'static impl Serialize {
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b"\x00")
            }
        }
        &Bytes
    }
}
