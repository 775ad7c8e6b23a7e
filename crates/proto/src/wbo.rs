//! Storage 1.1 Weave Basic Objects and query parameters (storage-1.1.md §3, §5).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Limits, SyncTimestamp};

pub const MAX_WBO_PAYLOAD: usize = Limits::WEAVE11.max_record_payload_bytes as usize;
pub const MAX_WBO_TTL: i64 = 31_536_000;
pub const MAX_POST_ITEMS: usize = Limits::WEAVE11.max_post_records as usize;
pub const MAX_POST_BYTES: usize = Limits::WEAVE11.max_post_bytes as usize;
/// Ids, parentids and predecessorids are at most 64 characters (S11-020).
pub const MAX_ID_CHARS: usize = 64;

/// A WBO id as a write may name it: 1–64 characters (S11-020). In a POST body it must not
/// contain `/` either, or it could never be addressed by a URL.
pub fn is_valid_wbo_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_CHARS && !id.contains('\0')
}

/// The fields a 1.1 write supplies; `None` is "absent" (and so is a JSON null).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WboInput {
    pub id: String,
    pub parentid: Option<String>,
    pub predecessorid: Option<String>,
    pub sortindex: Option<i32>,
    pub payload: Option<String>,
    pub ttl: Option<u32>,
}

/// A stored WBO as returned: only the fields that have values (S11-022).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wbo {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parentid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predecessorid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i32>,
    pub modified: SyncTimestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

fn short_string(v: &Value, field: &str) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        // No NUL: PostgreSQL cannot store one in text, so no backend takes it.
        Value::String(s) if s.chars().count() <= MAX_ID_CHARS && !s.contains('\0') => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(format!("invalid {field}")),
    }
}

/// Validates one WBO (S11-020, S11-021); unknown keys are ignored. The id may be absent
/// (a PUT names it in the URL).
pub fn parse_wbo(obj: &Map<String, Value>) -> Result<WboInput, String> {
    let mut w = WboInput::default();
    for (key, value) in obj {
        if value.is_array() || value.is_object() {
            return Err("invalid wbo".into());
        }
        match key.as_str() {
            "id" => w.id = short_string(value, "id")?.unwrap_or_default(),
            "parentid" => w.parentid = short_string(value, "parentid")?,
            "predecessorid" => w.predecessorid = short_string(value, "predecessorid")?,
            "sortindex" => {
                w.sortindex = match value {
                    Value::Null => None,
                    Value::Number(n) => {
                        let v = n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64));
                        match v {
                            Some(v) if v.abs() <= 999_999_999 => Some(v as i32),
                            _ => return Err("invalid sortindex".into()),
                        }
                    }
                    Value::String(s) => match s.trim().parse::<f64>() {
                        Ok(f) if f.is_finite() && f.trunc().abs() <= 999_999_999.0 => Some(f.trunc() as i32),
                        _ => return Err("invalid sortindex".into()),
                    },
                    _ => return Err("invalid sortindex".into()),
                }
            }
            "payload" => {
                w.payload = match value {
                    Value::Null => None,
                    Value::String(s) if s.contains('\0') => return Err("invalid payload".into()),
                    Value::String(s) if s.len() <= MAX_WBO_PAYLOAD => Some(s.clone()),
                    Value::String(_) => return Err("payload too large".into()),
                    _ => return Err("payload not a string".into()),
                }
            }
            "ttl" => {
                w.ttl = match value {
                    Value::Null => None,
                    Value::Number(n) => match n.as_i64() {
                        Some(v) if (0..=MAX_WBO_TTL).contains(&v) => Some(v as u32),
                        _ => return Err("invalid ttl".into()),
                    },
                    _ => return Err("invalid ttl".into()),
                }
            }
            _ => {}
        }
    }
    Ok(w)
}

/// Sorting of 1.1 reads; `None` is the default newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WboSort {
    #[default]
    Newest,
    Oldest,
    Index,
}

/// Selectors of `GET`/`DELETE /storage/<collection>` (§5.1, S11-090).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WboQuery {
    pub ids: Option<Vec<String>>,
    pub parentid: Option<String>,
    pub predecessorid: Option<String>,
    pub older: Option<SyncTimestamp>,
    pub newer: Option<SyncTimestamp>,
    pub index_above: Option<i64>,
    pub index_below: Option<i64>,
    pub full: bool,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub sort: WboSort,
}

impl WboQuery {
    /// Non-numeric numbers are an error (S11-050); unknown parameters are ignored.
    pub fn parse(query: &str) -> Result<Self, &'static str> {
        let mut q = WboQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let ts = |v: &str| SyncTimestamp::parse_seconds(v).map_err(|_| "timestamp");
            let int = |v: &str| v.trim().parse::<i64>().map_err(|_| "number");
            match key.as_ref() {
                "ids" => {
                    let ids: Vec<String> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    if ids.len() > 100 {
                        return Err("ids");
                    }
                    q.ids = Some(ids);
                }
                "parentid" => q.parentid = Some(value.into_owned()),
                "predecessorid" => q.predecessorid = Some(value.into_owned()),
                "older" => q.older = Some(ts(&value)?),
                "newer" => q.newer = Some(ts(&value)?),
                "index_above" => q.index_above = Some(int(&value)?),
                "index_below" => q.index_below = Some(int(&value)?),
                "full" => q.full = !value.is_empty(),
                "limit" => q.limit = Some(int(&value)?).filter(|n| *n > 0).map(|n| n as u64),
                "offset" => q.offset = Some(int(&value)?).filter(|n| *n > 0).map(|n| n as u64),
                "sort" => {
                    q.sort = match value.as_ref() {
                        "oldest" => WboSort::Oldest,
                        "index" => WboSort::Index,
                        _ => WboSort::Newest,
                    }
                }
                _ => {}
            }
        }
        if q.limit.is_none() {
            q.offset = None;
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wbo(v: Value) -> Result<WboInput, String> {
        parse_wbo(v.as_object().unwrap())
    }

    #[test]
    fn s11_020_s11_021_wbo_validation() {
        let w =
            wbo(serde_json::json!({"id": 12, "sortindex": 2.9, "payload": "p", "unknown": 1, "ttl": null})).unwrap();
        assert_eq!((w.id.as_str(), w.sortindex, w.ttl), ("12", Some(2), None));
        assert_eq!(wbo(serde_json::json!({"sortindex": "5"})).unwrap().sortindex, Some(5));
        for (bad, reason) in [
            (serde_json::json!({"id": "x".repeat(65)}), "invalid id"),
            (serde_json::json!({"parentid": "x".repeat(65)}), "invalid parentid"),
            (serde_json::json!({"ttl": 31_536_001}), "invalid ttl"),
            (serde_json::json!({"ttl": "1"}), "invalid ttl"),
            (serde_json::json!({"sortindex": "abc"}), "invalid sortindex"),
            (serde_json::json!({"sortindex": 1_000_000_000}), "invalid sortindex"),
            (serde_json::json!({"payload": 4}), "payload not a string"),
            (serde_json::json!({"payload": "x".repeat(262_145)}), "payload too large"),
            (serde_json::json!({"payload": ["a"]}), "invalid wbo"),
        ] {
            assert_eq!(wbo(bad).unwrap_err(), reason);
        }
    }

    #[test]
    fn s11_050_query_parsing() {
        let q = WboQuery::parse("ids=a,b&parentid=p&newer=1.5&index_above=3&full=1&limit=2&offset=1&sort=index&x=y")
            .unwrap();
        assert_eq!(q.ids.unwrap(), vec!["a", "b"]);
        assert_eq!(
            (q.index_above, q.limit, q.offset, q.sort),
            (Some(3), Some(2), Some(1), WboSort::Index)
        );
        assert!(q.full);
        assert!(!WboQuery::parse("full=").unwrap().full);
        assert_eq!(
            WboQuery::parse("offset=5").unwrap().offset,
            None,
            "offset only with limit"
        );
        assert_eq!(WboQuery::parse("sort=weird").unwrap().sort, WboSort::Newest);
        for bad in [
            "older=x",
            "newer=x",
            "index_above=x",
            "index_below=1.5x",
            "limit=x",
            "offset=x",
        ] {
            assert!(WboQuery::parse(bad).is_err(), "{bad}");
        }
    }
}
