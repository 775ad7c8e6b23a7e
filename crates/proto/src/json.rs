//! Request bodies as JSON, strictly: an object that names a key twice is refused rather
//! than read as "the last one wins", since two readers of the same record (this server
//! and another client, or two parsers) could otherwise disagree about what it says.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses a JSON document, refusing duplicate keys at any depth.
pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`from_slice`] for text.
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    from_slice(text.as_bytes())
}

/// An `application/newlines` body: one JSON document per line; a final newline ends the
/// last line rather than starting an empty one, and an empty body is no documents.
pub fn from_lines(bytes: &[u8]) -> serde_json::Result<Vec<Value>> {
    let text = std::str::from_utf8(bytes).map_err(|_| serde_json::Error::custom("invalid utf-8"))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|line| from_str(line.strip_suffix('\r').unwrap_or(line)))
        .collect()
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_bodies() {
        assert_eq!(from_lines(b"").unwrap(), Vec::<Value>::new());
        assert_eq!(from_lines(b"{\"a\":1}\n{\"a\":2}\n").unwrap().len(), 2);
        assert_eq!(from_lines(b"{\"a\":1}\r\n{\"a\":2}").unwrap().len(), 2);
        assert!(from_lines(b"\n").is_err(), "an empty line is not a document");
        assert!(from_lines(b"{\"a\":1,\"a\":2}").is_err());
        assert!(from_lines(&[0xff]).is_err());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(from_str(r#"{"id":"a","payload":"x","payload":"y"}"#).is_err());
        assert!(from_str(r#"[{"id":"a"},{"id":"b","id":"c"}]"#).is_err());
        assert!(from_str(r#"{"a":{"b":1,"b":2}}"#).is_err());
        let v = from_str(r#"{"id":"a","n":[1,2.5,-3,true,null,"s"],"o":{"k":"v"}}"#).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"a","n":[1,2.5,-3,true,null,"s"],"o":{"k":"v"}})
        );
        assert!(from_str(r#"{"a":1} trailing"#).is_err());
        assert_eq!(from_str(r#""\u00e9""#).unwrap(), Value::String("é".into()));
    }
}
