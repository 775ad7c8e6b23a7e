//! Query parameters of the storage endpoints (§7.2, §10) and the paging token (§7.4).

use data_encoding::BASE64URL_NOPAD;

use crate::names::is_valid_bso_id;
use crate::{ProtoError, SyncTimestamp};

pub const MAX_IDS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// `modified` descending, ties by id descending; also used when no sort is given (S15-076).
    #[default]
    Newest,
    Oldest,
    /// `sortindex` descending with nulls last, ties by id descending.
    Index,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offset {
    /// Skip this many matching items (the plain decimal format of S15-078).
    Skip(u64),
    /// The `<ms>:<n>` format of syncstorage-rs on MySQL (S15-079).
    Legacy { ms: i64, skip: u64 },
    /// Resume strictly after the item with this sort key. This is the token we emit: it
    /// stays correct while other clients write, because it names a position, not a count.
    After(SortKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Modified { ms: i64, id: String },
    Index { sortindex: Option<i32>, id: String },
}

impl Offset {
    /// Opaque and URL-safe: base64url of `m<ms>.<id>` or `i<sortindex|n>.<id>`.
    pub fn encode(key: &SortKey) -> String {
        let raw = match key {
            SortKey::Modified { ms, id } => format!("m{ms}.{id}"),
            SortKey::Index { sortindex: Some(s), id } => format!("i{s}.{id}"),
            SortKey::Index { sortindex: None, id } => format!("in.{id}"),
        };
        BASE64URL_NOPAD.encode(raw.as_bytes())
    }

    pub fn parse(s: &str) -> Result<Offset, ProtoError> {
        let bad = ProtoError::Query("offset");
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Offset::Skip).map_err(|_| bad);
        }
        if let Some((ms, n)) = s.split_once(':') {
            let ms: i64 = ms.parse().map_err(|_| bad.clone())?;
            let skip: u64 = n.parse().map_err(|_| bad.clone())?;
            if ms < 0 {
                return Err(bad);
            }
            return Ok(Offset::Legacy { ms, skip });
        }
        let raw = BASE64URL_NOPAD.decode(s.as_bytes()).map_err(|_| bad.clone())?;
        let raw = String::from_utf8(raw).map_err(|_| bad.clone())?;
        let (head, id) = raw.split_once('.').ok_or(bad.clone())?;
        if !is_valid_bso_id(id) {
            return Err(bad);
        }
        let id = id.to_string();
        let key = if let Some(ms) = head.strip_prefix('m') {
            SortKey::Modified {
                ms: ms.parse().map_err(|_| bad.clone())?,
                id,
            }
        } else if head == "in" {
            SortKey::Index { sortindex: None, id }
        } else if let Some(si) = head.strip_prefix('i') {
            SortKey::Index {
                sortindex: Some(si.parse().map_err(|_| bad.clone())?),
                id,
            }
        } else {
            return Err(bad);
        };
        Ok(Offset::After(key))
    }
}

/// Parameters of `GET /storage/{c}` (and, for `ids`, of `DELETE /storage/{c}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionQuery {
    pub ids: Option<Vec<String>>,
    pub newer: Option<SyncTimestamp>,
    pub older: Option<SyncTimestamp>,
    pub full: bool,
    pub limit: Option<u32>,
    pub offset: Option<Offset>,
    pub sort: Sort,
}

/// Parameters of `POST /storage/{c}` (S15-120).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchParam {
    None,
    New,
    Existing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostQuery {
    pub batch: BatchParam,
    pub commit: bool,
}

fn pairs(query: &str) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    form_urlencoded::parse(query.as_bytes())
}

/// `ids`: comma-separated, each entry trimmed, empty entries dropped; > 100 or an invalid
/// id is an error (S15-073). An empty list is returned as `Some(vec![])`.
pub fn parse_ids(value: &str) -> Result<Vec<String>, ProtoError> {
    let ids: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > MAX_IDS || !ids.iter().all(|id| is_valid_bso_id(id)) {
        return Err(ProtoError::Query("ids"));
    }
    Ok(ids)
}

impl CollectionQuery {
    /// Unknown parameters are ignored (S15-012); for repeated ones the last wins.
    pub fn parse(query: &str) -> Result<Self, ProtoError> {
        let mut q = CollectionQuery::default();
        for (key, value) in pairs(query) {
            match key.as_ref() {
                "ids" => q.ids = Some(parse_ids(&value)?),
                "newer" => {
                    q.newer = Some(SyncTimestamp::parse_seconds(&value).map_err(|_| ProtoError::Query("newer"))?);
                }
                "older" => {
                    q.older = Some(SyncTimestamp::parse_seconds(&value).map_err(|_| ProtoError::Query("older"))?);
                }
                "full" => q.full = true,
                "limit" => q.limit = Some(value.trim().parse().map_err(|_| ProtoError::Query("limit"))?),
                "offset" => q.offset = Some(Offset::parse(&value)?),
                "sort" => {
                    q.sort = match value.as_ref() {
                        "newest" | "none" => Sort::Newest,
                        "oldest" => Sort::Oldest,
                        "index" => Sort::Index,
                        _ => return Err(ProtoError::Query("sort")),
                    }
                }
                _ => {}
            }
        }
        if let Some(Offset::After(key)) = &q.offset {
            let matches = matches!(
                (key, q.sort),
                (SortKey::Index { .. }, Sort::Index) | (SortKey::Modified { .. }, Sort::Newest | Sort::Oldest)
            );
            if !matches {
                return Err(ProtoError::Query("offset"));
            }
        }
        if let (Some(Offset::Legacy { ms, .. }), false) = (&q.offset, q.sort == Sort::Index) {
            // S15-079: the timestamp of a legacy token must lie inside the newer/older window.
            let ms = SyncTimestamp::from_millis(*ms);
            if q.newer.is_some_and(|n| ms < n) || (q.newer.is_none() && q.older.is_some_and(|o| ms > o)) {
                return Err(ProtoError::Query("offset"));
            }
        }
        Ok(q)
    }
}

impl PostQuery {
    pub fn parse(query: &str) -> Result<Self, ProtoError> {
        let mut batch = BatchParam::None;
        let mut commit = None;
        for (key, value) in pairs(query) {
            match key.as_ref() {
                "batch" => {
                    batch = if value.is_empty() || value.eq_ignore_ascii_case("true") {
                        BatchParam::New
                    } else {
                        BatchParam::Existing(value.into_owned())
                    }
                }
                "commit" => commit = Some(value.eq_ignore_ascii_case("true")),
                _ => {}
            }
        }
        match (commit, &batch) {
            (Some(false), _) => Err(ProtoError::Query("commit")),
            (Some(true), BatchParam::None) => Err(ProtoError::Query("commit")),
            (commit, _) => Ok(PostQuery {
                batch,
                commit: commit.unwrap_or(false),
            }),
        }
    }
}

/// The value of `ids` in a `DELETE /storage/{c}` query, if the parameter is present.
/// An empty value is an empty list: a no-op, never "delete everything" (spec README §5).
pub fn delete_ids(query: &str) -> Result<Option<Vec<String>>, ProtoError> {
    let mut ids = None;
    for (key, value) in pairs(query) {
        if key == "ids" {
            ids = Some(parse_ids(&value)?);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s15_072_parameters() {
        let q =
            CollectionQuery::parse("ids=a,%20b,,c&newer=12.345&older=20&full=&limit=5&sort=oldest&blabla=1").unwrap();
        assert_eq!(q.ids.unwrap(), vec!["a", "b", "c"]);
        assert_eq!(q.newer.unwrap().as_millis(), 12_340);
        assert_eq!(q.older.unwrap().as_millis(), 20_000);
        assert!(q.full);
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.sort, Sort::Oldest);
        for bad in [
            "limit=-1",
            "limit=abc",
            "newer=abc",
            "older=abc",
            "sort=up",
            "offset=quux",
            "offset=wibble:buzz",
            "newer=-1",
        ] {
            assert!(CollectionQuery::parse(bad).is_err(), "{bad}");
        }
        assert!(CollectionQuery::parse("sort=none").is_ok());
    }

    #[test]
    fn s15_073_id_list_limits() {
        let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert!(CollectionQuery::parse(&format!("ids={}", hundred.join(","))).is_ok());
        let more: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        assert!(CollectionQuery::parse(&format!("ids={}", more.join(","))).is_err());
        assert_eq!(delete_ids("ids=").unwrap(), Some(vec![]));
        assert_eq!(delete_ids("x=1").unwrap(), None);
    }

    #[test]
    fn s15_078_offsets_round_trip() {
        for key in [
            SortKey::Modified {
                ms: 1_700_000_000_120,
                id: "a:b.c d".into(),
            },
            SortKey::Index {
                sortindex: Some(-4),
                id: "x".into(),
            },
            SortKey::Index {
                sortindex: None,
                id: "y".into(),
            },
        ] {
            let token = Offset::encode(&key);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Offset::parse(&token).unwrap(), Offset::After(key));
        }
        assert_eq!(Offset::parse("12").unwrap(), Offset::Skip(12));
        assert_eq!(Offset::parse("3800:2").unwrap(), Offset::Legacy { ms: 3800, skip: 2 });
        let index_token = Offset::encode(&SortKey::Index {
            sortindex: Some(1),
            id: "x".into(),
        });
        assert!(CollectionQuery::parse(&format!("offset={index_token}")).is_err());
        assert!(CollectionQuery::parse(&format!("offset={index_token}&sort=index")).is_ok());
    }

    #[test]
    fn s15_120_batch_and_commit() {
        assert_eq!(
            PostQuery::parse("").unwrap(),
            PostQuery {
                batch: BatchParam::None,
                commit: false
            }
        );
        assert_eq!(PostQuery::parse("batch").unwrap().batch, BatchParam::New);
        assert_eq!(PostQuery::parse("batch=TRUE").unwrap().batch, BatchParam::New);
        assert_eq!(
            PostQuery::parse("batch=ab%3D").unwrap().batch,
            BatchParam::Existing("ab=".into())
        );
        assert!(PostQuery::parse("batch=true&commit=true").unwrap().commit);
        assert!(PostQuery::parse("commit=true").is_err());
        assert!(PostQuery::parse("batch=true&commit=yes").is_err());
    }
}
