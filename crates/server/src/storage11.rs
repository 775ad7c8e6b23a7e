//! Storage 1.1 (`/1.1/<username>/…`, also `/1.0/` and `/1/`) with HTTP Basic auth, as
//! specified in `shared/spec/storage-1.1.md`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use serde_json::{json, Value};
use syncstead_proto::respcode;
use syncstead_proto::wbo::{
    is_valid_wbo_id, parse_wbo, Wbo, WboInput, WboQuery, WboSort, MAX_POST_BYTES, MAX_POST_ITEMS,
};
use syncstead_proto::SyncTimestamp;
use syncstead_store::{Precondition, WboWrite};

use crate::auth::WeaveUser;
use crate::error::{ApiError, WeaveError};
use crate::headers::{X_IF_UNMODIFIED_SINCE, X_WEAVE_RECORDS, X_WEAVE_TIMESTAMP};
use crate::state::AppState;

pub const PREFIXES: [&str; 3] = ["1.1", "1.0", "1"];

/// The routes under one API prefix. The three-segment path is shared with the token server
/// under `/1.0/` (GET there is the token server's; DELETE here is "delete all storage").
pub fn router(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(&format!("/{prefix}/{{application}}/{{version}}"), delete(delete_all))
        .route(&format!("/{prefix}/{{username}}/info/{{what}}"), get(info))
        .route(
            &format!("/{prefix}/{{username}}/storage/{{collection}}"),
            get(get_collection)
                .post(post_collection)
                .put(post_collection)
                .delete(delete_collection),
        )
        .route(
            &format!("/{prefix}/{{username}}/storage/{{collection}}/{{id}}"),
            get(get_item).put(put_item).delete(delete_item),
        )
}

fn json_body(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// S11-031: the write time, so the header never runs ahead of or behind the records.
fn at(mut r: Response, t: SyncTimestamp) -> Response {
    if let Ok(v) = HeaderValue::from_str(&t.to_string()) {
        r.headers_mut().insert(X_WEAVE_TIMESTAMP, v);
    }
    r
}

/// §5.1 selectors; a malformed number is 400 `8` (S11-050).
fn selectors(query: Option<&str>) -> Result<WboQuery, ApiError> {
    WboQuery::parse(query.unwrap_or("")).map_err(|_| ApiError::BadRequest(respcode::INVALID_WBO))
}

fn unmodified_since(headers: &HeaderMap) -> Result<Option<SyncTimestamp>, ApiError> {
    match headers.get(X_IF_UNMODIFIED_SINCE) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| SyncTimestamp::parse_seconds(s).ok())
            .map(Some)
            .ok_or(ApiError::BadRequest(respcode::NONE)),
    }
}

async fn info(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, what)): Path<(String, String)>,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let colls = state.legacy.wbo_collections(bucket).await?;
    if what == "quota" {
        let used: u64 = colls.iter().map(|c| c.bytes).sum();
        let quota = state.settings.quota_bytes.map(|q| q as f64 / 1024.0);
        return Ok(json_body(
            StatusCode::OK,
            json!([used as f64 / 1024.0, quota]).to_string(),
        ));
    }
    // SyncTimestamp serialises with its two decimals (S11-031), so times go in as they are.
    let (body, n) = if what == "collections" {
        let map: BTreeMap<String, SyncTimestamp> = colls.into_iter().map(|c| (c.name, c.modified)).collect();
        (serde_json::to_string(&map).map_err(ApiError::internal)?, map.len())
    } else {
        let map: serde_json::Map<String, Value> = colls
            .into_iter()
            .filter(|c| c.count > 0)
            .map(|c| {
                let v = if what == "collection_counts" {
                    json!(c.count)
                } else {
                    json!(c.bytes as f64 / 1024.0)
                };
                (c.name, v)
            })
            .collect();
        let n = map.len();
        (Value::Object(map).to_string(), n)
    };
    let mut r = json_body(StatusCode::OK, body);
    r.headers_mut().insert(X_WEAVE_RECORDS, HeaderValue::from(n));
    Ok(r)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Newlines,
    Whoisi,
}

/// S11-053: by the client's q-values; on a tie whoisi wins; anything else is JSON.
fn format(headers: &HeaderMap) -> Format {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Format::Json;
    };
    let mut best: Option<(f32, u8, Format)> = None;
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.trim().parse::<f32>().ok()))
            .next()
            .unwrap_or(1.0);
        let (rank, f) = match media.as_str() {
            "application/whoisi" => (3, Format::Whoisi),
            "application/newlines" => (2, Format::Newlines),
            "application/json" => (1, Format::Json),
            _ => continue,
        };
        if best.is_none_or(|(bq, br, _)| q > bq || (q == bq && rank > br)) {
            best = Some((q, rank, f));
        }
    }
    best.map_or(Format::Json, |(_, _, f)| f)
}

/// One item of a listing in the chosen format (S11-051, S11-054, S11-055): a full WBO or
/// its id, after `first` or not.
fn render_item(out: &mut Vec<u8>, wbo: &Wbo, full: bool, format: Format, first: bool) {
    // SyncTimestamp writes its two decimals; serde_json::Value would drop trailing zeros.
    let text = if full {
        serde_json::to_string(wbo)
    } else {
        serde_json::to_string(&wbo.id)
    }
    .unwrap_or_default();
    match format {
        Format::Json => {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(text.as_bytes());
        }
        // S11-054: the JSON text of a record holds no raw newline.
        Format::Newlines => {
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        Format::Whoisi => {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

fn render_items(out: &mut Vec<u8>, wbos: &[Wbo], full: bool, format: Format, mut first: bool) {
    for w in wbos {
        render_item(out, w, full, format, first);
        first = false;
    }
}

/// Most items one read of a listing takes; a listing with more is streamed a read at a time.
const CHUNK: u64 = 500;

async fn get_collection(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let mut q = selectors(query.as_deref())?;
    // Reads after the first see nothing written after the listing began.
    let bound = SyncTimestamp::from_millis(SyncTimestamp::now().as_millis() + 10);
    q.older = Some(q.older.map_or(bound, |o| o.min(bound)));
    let fmt = format(&headers);
    let content_type = match fmt {
        Format::Json => "application/json",
        Format::Newlines => "application/newlines",
        Format::Whoisi => "application/whoisi",
    };
    let total = state.legacy.wbo_count(bucket, &coll, &q).await?;
    let (open, close): (&[u8], &[u8]) = if fmt == Format::Json { (b"[", b"]") } else { (b"", b"") };
    let body = if total <= CHUNK {
        let wbos = state.legacy.wbo_get(bucket, &coll, &q).await?;
        let mut out = open.to_vec();
        render_items(&mut out, &wbos, q.full, fmt, true);
        out.extend_from_slice(close);
        axum::body::Body::from(out)
    } else {
        let legacy = state.legacy.clone();
        crate::streaming::body(move |tx| async move {
            let skip = q.offset.filter(|_| q.limit.is_some()).unwrap_or(0);
            let mut sent = 0u64;
            let mut out = open.to_vec();
            // Later reads take a chunk's worth of records, by the size of the last ones.
            let mut take = 64u64;
            // Newest- and oldest-first listings continue from the last key sent; an index
            // listing (whose key an id-only listing does not carry) by offset.
            let mut last: Option<(SyncTimestamp, String)> = None;
            while sent < total {
                let chunk = WboQuery {
                    limit: Some(take.min(total - sent)),
                    offset: Some(skip + sent),
                    ..q.clone()
                };
                let read = match (&last, q.sort) {
                    (Some(key), WboSort::Newest | WboSort::Oldest) => {
                        let chunk = WboQuery { offset: None, ..chunk };
                        legacy.wbo_get_after(bucket, &coll, &chunk, key.clone()).await
                    }
                    _ => legacy.wbo_get(bucket, &coll, &chunk).await,
                };
                let wbos = match read {
                    Ok(w) => w,
                    Err(e) => return tx.fail(crate::streaming::Cut(e.to_string())).await,
                };
                if wbos.is_empty() {
                    break;
                }
                render_items(&mut out, &wbos, q.full, fmt, sent == 0);
                sent += wbos.len() as u64;
                last = wbos.last().map(|w| (w.modified, w.id.clone()));
                let each = (out.len() / wbos.len()).max(1) as u64;
                take = (crate::streaming::CHUNK_BYTES as u64 / each).clamp(1, CHUNK);
                if !tx.send(std::mem::take(&mut out)).await {
                    return;
                }
            }
            out.extend_from_slice(close);
            tx.send(out).await;
        })
    };
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    r.headers_mut().insert(X_WEAVE_RECORDS, HeaderValue::from(total));
    Ok(r)
}

async fn get_item(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll, id)): Path<(String, String, String)>,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let wbo = state
        .legacy
        .wbo_get_one(bucket, &coll, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_body(
        StatusCode::OK,
        serde_json::to_string(&wbo).unwrap_or_default(),
    ))
}

/// S11-071: `X-Weave-Quota-Remaining`, the KiB left, once that is 1 MiB or less (a full
/// quota is refused by the store, 400 `14`).
fn with_quota(mut r: Response, state: &AppState, w: &WboWrite) -> Response {
    if let (Some(quota), Some(used)) = (state.settings.quota_bytes, w.used_bytes) {
        let left_kib = quota.saturating_sub(used) / 1024;
        if left_kib <= 1024 {
            r.headers_mut()
                .insert("x-weave-quota-remaining", HeaderValue::from(left_kib));
        }
    }
    r
}

async fn put_item(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, WeaveError> {
    let since = unmodified_since(&headers)?;
    let read = crate::body::read(&state, &headers, body).await?;
    let body = &read.bytes;
    let value =
        syncstead_proto::json::from_slice(body).map_err(|_| ApiError::BadRequest(respcode::JSON_PARSE_FAILURE))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::BadRequest(respcode::INVALID_WBO).into());
    };
    let mut wbo = parse_wbo(&obj).map_err(|_| ApiError::BadRequest(respcode::INVALID_WBO))?;
    wbo.id = id;
    put_one(&state, &user, &coll, wbo, since).await
}

/// S11-070…S11-074: one WBO written; the answer is its `modified`.
async fn put_one(
    state: &AppState,
    user: &WeaveUser,
    coll: &str,
    wbo: WboInput,
    since: Option<SyncTimestamp>,
) -> Result<Response, WeaveError> {
    if !is_valid_wbo_id(&wbo.id) {
        return Err(ApiError::BadRequest(respcode::INVALID_WBO).into());
    }
    let w = state
        .legacy
        .wbo_put(user.bucket(), coll, vec![wbo], since, state.settings.write_limits())
        .await?;
    let m = w.modified.first().copied().unwrap_or(w.time);
    Ok(with_quota(
        at(json_body(StatusCode::OK, m.to_string()), w.time),
        state,
        &w,
    ))
}

/// S11-080…S11-084.
async fn post_collection(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let since = unmodified_since(&headers)?;
    let read = crate::body::read(&state, &headers, body).await?;
    let body = &read.bytes;
    let parse_failure = |_| ApiError::BadRequest(respcode::JSON_PARSE_FAILURE);
    let newlines = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/newlines"))
        });
    let elements = if newlines {
        syncstead_proto::json::from_lines(body).map_err(parse_failure)?
    } else {
        match syncstead_proto::json::from_slice(body).map_err(parse_failure)? {
            Value::Array(items) => items,
            // A single object is a PUT of that object (S11-080).
            Value::Object(obj) => {
                let w = parse_wbo(&obj).map_err(|_| ApiError::BadRequest(respcode::INVALID_WBO))?;
                if w.id.contains('/') {
                    return Err(ApiError::BadRequest(respcode::INVALID_WBO).into());
                }
                return put_one(&state, &user, &coll, w, since).await;
            }
            _ => return Err(ApiError::BadRequest(respcode::INVALID_WBO).into()),
        }
    };
    let mut accepted: Vec<WboInput> = Vec::new();
    let mut failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total = 0usize;
    for (index, element) in elements.into_iter().enumerate() {
        let Value::Object(obj) = element else {
            failed.entry(String::new()).or_default().push("invalid wbo".into());
            continue;
        };
        let w = match parse_wbo(&obj) {
            Ok(w) if w.id.is_empty() => {
                failed.entry(String::new()).or_default().push("invalid id".into());
                continue;
            }
            Ok(w) => w,
            Err(reason) => {
                let id = obj
                    .get("id")
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_default();
                failed.entry(id).or_default().push(reason);
                continue;
            }
        };
        total += w.payload.as_ref().map_or(0, String::len);
        if index >= MAX_POST_ITEMS {
            failed.entry(w.id).or_default().push("retry wbo".into());
        } else if total >= MAX_POST_BYTES {
            failed.entry(w.id).or_default().push("retry bytes".into());
        } else {
            accepted.push(w);
        }
    }
    let success: Vec<String> = accepted.iter().map(|w| w.id.clone()).collect();
    let w = state
        .legacy
        .wbo_put(bucket, &coll, accepted, since, state.settings.write_limits())
        .await?;
    let t = w.time;
    let body = format!(
        "{{\"modified\":{t},\"success\":{},\"failed\":{}}}",
        serde_json::to_string(&success).unwrap_or_default(),
        serde_json::to_string(&failed).unwrap_or_default()
    );
    Ok(with_quota(at(json_body(StatusCode::OK, body), t), &state, &w))
}

async fn delete_collection(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let since = unmodified_since(&headers)?;
    let q = selectors(query.as_deref())?;
    // `full` only shapes output; it selects nothing.
    let q = WboQuery { full: false, ..q };
    let t = state.legacy.wbo_delete(bucket, &coll, &q, since).await?;
    Ok(at(json_body(StatusCode::OK, t.to_string()), t))
}

async fn delete_item(
    State(state): State<AppState>,
    user: WeaveUser,
    Path((_, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    let since = unmodified_since(&headers)?;
    let q = WboQuery {
        ids: Some(vec![id]),
        ..Default::default()
    };
    let t = state.legacy.wbo_delete(bucket, &coll, &q, since).await?;
    Ok(at(json_body(StatusCode::OK, t.to_string()), t))
}

/// S11-094/095: `DELETE /<api>/<username>/storage`, only with `X-Confirm-Delete`.
async fn delete_all(
    State(state): State<AppState>,
    user: WeaveUser,
    headers: HeaderMap,
) -> Result<Response, WeaveError> {
    let bucket = user.bucket();
    if headers.get("x-confirm-delete").is_none() {
        return Err(ApiError::BadRequest(respcode::CANNOT_OVERWRITE).into());
    }
    state.store.delete_storage(bucket, Precondition::None).await?;
    let t = SyncTimestamp::now();
    Ok(at(json_body(StatusCode::OK, t.to_string()), t))
}
