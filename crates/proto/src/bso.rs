//! BSOs as clients send them (validated field by field, §1.3) and as the server returns them (S15-005).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::names::is_valid_bso_id;
use crate::{ProtoError, SyncTimestamp};

pub const MAX_SORTINDEX: i64 = 999_999_999;
pub const MAX_TTL: i64 = 999_999_999;

/// The fields a write supplies; `None` means "absent" (a JSON `null` counts as absent, S15-006).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BsoInput {
    pub id: String,
    pub sortindex: Option<i32>,
    pub payload: Option<String>,
    /// Seconds to live from the write time.
    pub ttl: Option<u32>,
}

impl BsoInput {
    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, String::len)
    }
}

/// A stored BSO as returned by reads: exactly `id`, `modified`, `payload`, and `sortindex`
/// when it is set (S15-005).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bso {
    pub id: String,
    pub modified: SyncTimestamp,
    pub payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i32>,
}

impl Bso {
    pub fn as_ref(&self) -> BsoRef<'_> {
        BsoRef {
            id: &self.id,
            modified: self.modified,
            payload: &self.payload,
            sortindex: self.sortindex,
        }
    }
}

/// A stored BSO borrowed from wherever it was read (a database row, a [`Bso`]): written
/// exactly as [`Bso`] is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BsoRef<'a> {
    pub id: &'a str,
    pub modified: SyncTimestamp,
    pub payload: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i32>,
}

/// How the records of a `GET /storage/{c}` listing are written: whole records (`full`) or
/// their ids, as one JSON array or as `application/newlines` (one JSON value a line).
/// Listings are written a part at a time, so this writes one record and the separator
/// before it; [`ListingFormat::open`] and [`ListingFormat::close`] go around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingFormat {
    pub full: bool,
    pub newlines: bool,
}

impl ListingFormat {
    pub fn open(self, out: &mut Vec<u8>) {
        if !self.newlines {
            out.push(b'[');
        }
    }

    /// Writes one record; `first` when it is the listing's first.
    pub fn push(self, out: &mut Vec<u8>, bso: &BsoRef<'_>, first: bool) {
        if !self.newlines && !first {
            out.push(b',');
        }
        // Serialising plain strings and numbers into a Vec cannot fail.
        let _ = if self.full {
            serde_json::to_writer(&mut *out, bso)
        } else {
            serde_json::to_writer(&mut *out, bso.id)
        };
        if self.newlines {
            out.push(b'\n');
        }
    }

    pub fn close(self, out: &mut Vec<u8>) {
        if !self.newlines {
            out.push(b']');
        }
    }
}

const KNOWN_FIELDS: &[&str] = &["id", "sortindex", "payload", "ttl", "modified", "collection"];

/// Validates one BSO object. `id` is taken from the object and may be absent (a PUT names
/// its id in the URL); every present value must be of the right type and range (S15-089,
/// S15-105). The error string is the per-item failure reason.
pub fn parse_bso_fields(mut obj: Map<String, Value>) -> Result<(Option<String>, BsoInput), String> {
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            return Err(format!("unknown field {key}"));
        }
    }
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_valid_bso_id(&s) => Some(s),
        Some(_) => return Err("invalid bso: invalid id".into()),
    };
    let sortindex = match obj.get("sortindex") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (-MAX_SORTINDEX..=MAX_SORTINDEX).contains(&v) => Some(v as i32),
            _ => return Err("invalid bso: invalid sortindex".into()),
        },
        Some(_) => return Err("invalid bso: invalid sortindex".into()),
    };
    let payload = match obj.remove("payload") {
        None | Some(Value::Null) => None,
        // PostgreSQL cannot store a NUL in text; refused alike on every backend.
        Some(Value::String(s)) if s.contains('\0') => return Err("invalid bso: payload contains NUL".into()),
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("invalid bso: payload not a string".into()),
    };
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (0..=MAX_TTL).contains(&v) => Some(v as u32),
            _ => return Err("invalid bso: invalid ttl".into()),
        },
        Some(_) => return Err("invalid bso: invalid ttl".into()),
    };
    Ok((
        id,
        BsoInput {
            id: String::new(),
            sortindex,
            payload,
            ttl,
        },
    ))
}

/// A known client bug writes crypto/keys with an all-zero IV; such payloads are refused (S15-091).
pub fn is_known_bad_crypto_payload(payload: &str) -> bool {
    const NEEDLE: &str = "IV\":";
    const ZERO_IV: &str = "\"AAAAAAAAAAAAAAAAAAAAAA==";
    let mut rest = payload;
    while let Some(pos) = rest.find(NEEDLE) {
        let after = rest[pos + NEEDLE.len()..].trim_start_matches(|c: char| c.is_whitespace());
        if after.starts_with(ZERO_IV) {
            return true;
        }
        rest = &rest[pos + NEEDLE.len()..];
    }
    false
}

/// Parses a PUT body: a JSON object, validated as a whole (S15-089).
pub fn parse_put_body(body: &[u8]) -> Result<BsoInput, ProtoError> {
    let value = crate::json::from_slice(body).map_err(|_| ProtoError::Bso("invalid json".into()))?;
    let Value::Object(obj) = value else {
        return Err(ProtoError::Bso("not an object".into()));
    };
    parse_bso_fields(obj).map(|(_, bso)| bso).map_err(ProtoError::Bso)
}

/// One element of a POST body after whole-request checks: either a valid BSO or a
/// per-item failure (S15-105).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostItem {
    Valid(BsoInput),
    Invalid { id: String, reason: String },
}

/// Parses a POST body (`application/json` array or `application/newlines`) into items.
/// Whole-request failures (S15-102): not an array, unparsable JSON or line, an element that
/// is not an object, an element without a string `id`, or a duplicated id.
pub fn parse_post_body(body: &[u8], newlines: bool) -> Result<Vec<PostItem>, ProtoError> {
    let bad = |why: &str| ProtoError::Bso(why.to_string());
    let values: Vec<Value> = if newlines {
        crate::json::from_lines(body).map_err(|_| bad("invalid json line"))?
    } else {
        match crate::json::from_slice(body).map_err(|_| bad("invalid json"))? {
            Value::Array(items) => items,
            _ => return Err(bad("not a list")),
        }
    };
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    let mut items = Vec::with_capacity(values.len());
    for value in values {
        let Value::Object(obj) = value else {
            return Err(bad("element is not an object"));
        };
        let Some(Value::String(id)) = obj.get("id") else {
            return Err(bad("element without an id"));
        };
        let id = id.clone();
        if !seen.insert(id.clone()) {
            return Err(bad("duplicate id"));
        }
        items.push(match parse_bso_fields(obj) {
            Ok((_, mut bso)) => {
                bso.id = id;
                PostItem::Valid(bso)
            }
            Err(reason) => PostItem::Invalid { id, reason },
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &str) -> Result<BsoInput, ProtoError> {
        parse_put_body(s.as_bytes())
    }

    #[test]
    fn s15_089_put_field_validation() {
        assert!(put(r#"{"payload":"x","sortindex":-42,"ttl":0}"#).is_ok());
        assert_eq!(put(r#"{"payload":"x","ttl":null}"#).unwrap().ttl, None);
        assert!(put(r#"{"payload":"x","modified":0,"collection":"c","id":"zz"}"#).is_ok());
        for bad in [
            r#""notabso""#,
            "42",
            "{",
            r#"{"sortindex":"xxx"}"#,
            r#"{"sortindex":"2.6"}"#,
            r#"{"sortindex":2.6}"#,
            r#"{"sortindex":1000000000}"#,
            r#"{"payload":42}"#,
            r#"{"ttl":"eh?"}"#,
            r#"{"ttl":"4.2"}"#,
            r#"{"ttl":-1}"#,
            r#"{"id":"A\nB"}"#,
            r#"{"unknown":1}"#,
        ] {
            assert!(put(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s15_102_post_whole_request_errors() {
        for bad in [
            r#""notalist""#,
            "42",
            "{}",
            "",
            r#"[{"id":"a"},"BAD"]"#,
            r#"[{"payload":"x"}]"#,
            r#"[{"id":1}]"#,
            r#"[{"id":"a"},{"id":"a"}]"#,
        ] {
            assert!(parse_post_body(bad.as_bytes(), false).is_err(), "{bad}");
        }
        assert!(parse_post_body(b"\n", true).is_err());
        assert_eq!(parse_post_body(b"", true).unwrap(), vec![]);
        let items = parse_post_body(b"{\"id\":\"a\"}\r\n{\"id\":\"b\",\"invalid\":1}\n", true).unwrap();
        assert!(matches!(items[0], PostItem::Valid(_)));
        assert!(matches!(items[1], PostItem::Invalid { .. }));
    }

    #[test]
    fn s15_091_known_bad_iv() {
        assert!(is_known_bad_crypto_payload(
            r#"{"IV": "AAAAAAAAAAAAAAAAAAAAAA==","x":1}"#
        ));
        assert!(is_known_bad_crypto_payload(r#"{"IV":"AAAAAAAAAAAAAAAAAAAAAA=="}"#));
        assert!(!is_known_bad_crypto_payload(r#"{"IV":"AAAAAAAAAAAAAAAAAAAAAB=="}"#));
    }

    #[test]
    fn s15_005_output_fields() {
        let bso = Bso {
            id: "a".into(),
            modified: SyncTimestamp::from_millis(1500),
            payload: "p".into(),
            sortindex: None,
        };
        assert_eq!(
            serde_json::to_string(&bso).unwrap(),
            r#"{"id":"a","modified":1.50,"payload":"p"}"#
        );
    }
}
