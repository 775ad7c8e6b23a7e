//! SyncStorage 1.5 (`/1.5/{uid}/…`), as specified in `shared/spec/storage-1.5.md`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use serde_json::json;
use syncstead_proto::bso::{is_known_bad_crypto_payload, parse_post_body, parse_put_body, PostItem};
use syncstead_proto::names::parse_uid;
use syncstead_proto::query::{delete_ids, BatchParam, CollectionQuery, PostQuery};
use syncstead_proto::{respcode, BsoInput, ListingFormat, SyncTimestamp};

use crate::auth::HawkUser;
use crate::error::ApiError;
use crate::headers::*;
use crate::state::AppState;
use crate::streaming::CHUNK_BYTES;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/1.5/{uid}", delete(delete_storage))
        .route("/1.5/{uid}/storage", delete(delete_storage))
        .route("/1.5/{uid}/info/configuration", get(configuration))
        .route("/1.5/{uid}/info/{what}", get(info))
        .route(
            "/1.5/{uid}/storage/{collection}",
            get(get_collection).post(post_collection).delete(delete_collection),
        )
        .route(
            "/1.5/{uid}/storage/{collection}/{id}",
            get(get_bso).put(put_bso).delete(delete_bso),
        )
}

fn ts_header(t: SyncTimestamp) -> HeaderValue {
    HeaderValue::from_str(&t.to_string()).expect("timestamps are ASCII")
}

/// A JSON 2xx response with `X-Last-Modified` (S15-031, S15-032).
fn json_response(status: StatusCode, modified: SyncTimestamp, body: String) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    r.headers_mut().insert(X_LAST_MODIFIED, ts_header(modified));
    r
}

fn with_records(mut r: Response, n: usize) -> Response {
    r.headers_mut().insert(X_WEAVE_RECORDS, HeaderValue::from(n));
    r
}

// ---- info ----------------------------------------------------------------------------

/// Served without auth and without touching the database (S15-065).
async fn configuration(State(state): State<AppState>, Path(uid): Path<String>) -> Result<Response, ApiError> {
    parse_uid(&uid).ok_or(ApiError::NotFound)?;
    let body = serde_json::to_string(&state.settings.limits).map_err(ApiError::internal)?;
    Ok(json_response(StatusCode::OK, SyncTimestamp::ZERO, body))
}

async fn info(
    State(state): State<AppState>,
    ctx: HawkUser,
    Path((_, what)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match what.as_str() {
        "collections" => {
            let (storage, colls) = state.store.collection_timestamps(ctx.bucket, ctx.pre).await?;
            let map: BTreeMap<String, SyncTimestamp> = colls.into_iter().collect();
            let body = serde_json::to_string(&map).map_err(ApiError::internal)?;
            Ok(with_records(json_response(StatusCode::OK, storage, body), map.len()))
        }
        "collection_counts" | "collection_usage" | "quota" => {
            let (storage, usage) = state.store.collection_usage(ctx.bucket, ctx.pre).await?;
            if what == "quota" {
                let total: u64 = usage.iter().map(|u| u.bytes).sum();
                let quota = state.settings.quota_bytes.map(|q| q as f64 / 1024.0);
                let body = json!([total as f64 / 1024.0, quota]).to_string();
                return Ok(json_response(StatusCode::OK, storage, body));
            }
            let map: serde_json::Map<String, serde_json::Value> = usage
                .into_iter()
                .map(|u| {
                    let v = if what == "collection_counts" {
                        json!(u.count)
                    } else {
                        json!(u.bytes as f64 / 1024.0)
                    };
                    (u.collection, v)
                })
                .collect();
            let n = map.len();
            Ok(with_records(
                json_response(StatusCode::OK, storage, serde_json::Value::Object(map).to_string()),
                n,
            ))
        }
        _ => Err(ApiError::NotFound),
    }
}

// ---- reads ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Newlines,
}

/// S15-084: walk the media ranges by descending q; `*/*` or `application/json` → JSON,
/// `application/newlines` → newlines; nothing acceptable → 406.
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    let mut ranges: Vec<(f32, String)> = Vec::new();
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in pieces {
            if let Some(v) = p.trim().strip_prefix("q=") {
                match v.trim().parse::<f32>() {
                    Ok(v) => q = v,
                    Err(_) => return Ok(Format::Json),
                }
            }
        }
        ranges.push((q, media));
    }
    if ranges.is_empty() {
        return Ok(Format::Json);
    }
    ranges.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    for (q, media) in ranges {
        if q <= 0.0 {
            continue;
        }
        match media.as_str() {
            "*/*" | "application/json" | "application/*" => return Ok(Format::Json),
            "application/newlines" => return Ok(Format::Newlines),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable)
}

async fn get_collection(
    State(state): State<AppState>,
    ctx: HawkUser,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut query = CollectionQuery::parse(query.as_deref().unwrap_or(""))?;
    // A client that pages gets at most max_total_records a page, with a token for the
    // rest; one that does not gets every matching record (S15-081), streamed.
    let cap = state.settings.limits.max_total_records.min(u32::MAX as u64) as u32;
    query.limit = query.limit.map(|l| l.min(cap));
    let format = negotiate(&headers)?;
    let listing = ListingFormat {
        full: query.full,
        newlines: format == Format::Newlines,
    };
    let (page, extent) = state
        .store
        .open_listing(ctx.bucket, &ctx.collection, &query, FIRST_CHUNK, ctx.pre)
        .await?;
    let modified = page.modified;
    let content_type = match format {
        Format::Json => "application/json",
        Format::Newlines => "application/newlines",
    };
    let (body, records, next_offset) = match (extent, page.next_offset) {
        // More than the first read held, and the client asked for more: stream it, until
        // as many records have gone out as the extent (read with the first) counted.
        (Some(extent), Some(cursor)) => {
            let body = stream_listing(state, ctx, query, page.bsos, cursor, extent.records, listing);
            (body, extent.records, extent.next_offset)
        }
        // The first read held everything asked for (and its token, if the limit cut it).
        (_, next) => {
            let n = page.bsos.len() as u64;
            (small_body(page.bsos, listing).await?, n, next)
        }
    };
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    r.headers_mut().insert(X_LAST_MODIFIED, ts_header(modified));
    r.headers_mut().insert(X_WEAVE_RECORDS, HeaderValue::from(records));
    if let Some(next) = next_offset {
        if let Ok(v) = HeaderValue::from_str(&next) {
            r.headers_mut().insert(X_WEAVE_NEXT_OFFSET, v);
        }
    }
    Ok(r)
}

/// Records the first read of a listing asks for: most reads (`newer=` the last sync) are
/// answered by it alone. Later chunks aim at [`CHUNK_BYTES`].
const FIRST_CHUNK: u32 = 100;

/// A listing that fitted the first read.
async fn small_body(bsos: Vec<syncstead_proto::Bso>, format: ListingFormat) -> Result<Body, ApiError> {
    let payload_bytes: usize = bsos.iter().map(|b| b.payload.len()).sum();
    let render = move || {
        let mut out = Vec::new();
        format.open(&mut out);
        render_chunk(&mut out, bsos, format);
        format.close(&mut out);
        out
    };
    // Large pages are rendered off the async workers, so small requests are not held up.
    let body = if payload_bytes > OFFLOAD_BYTES {
        tokio::task::spawn_blocking(render).await.map_err(ApiError::internal)?
    } else {
        render()
    };
    Ok(Body::from(body))
}

/// Streams a listing too large for one read: the first chunk, then one read after another
/// from where the previous stopped (the paging keyset), `total` records in all. The store
/// writes each later chunk as it reads it, so no record is copied on its way.
fn stream_listing(
    state: AppState,
    ctx: HawkUser,
    query: CollectionQuery,
    first: Vec<syncstead_proto::Bso>,
    cursor: String,
    total: u64,
    format: ListingFormat,
) -> Body {
    crate::streaming::body(move |out| async move {
        let mut sent = first.len() as u64;
        let mut chunk = Vec::new();
        format.open(&mut chunk);
        render_chunk(&mut chunk, first, format);
        let mut limit = chunk_limit(chunk.len(), sent);
        let mut cursor = Some(cursor);
        while let Some(at) = cursor.take().filter(|_| sent < total) {
            if !out.send(std::mem::take(&mut chunk)).await {
                return;
            }
            let q = CollectionQuery {
                offset: match syncstead_proto::query::Offset::parse(&at) {
                    Ok(o) => Some(o),
                    Err(e) => return out.fail(crate::streaming::Cut(e.to_string())).await,
                },
                limit: Some(limit.min((total - sent).min(u32::MAX as u64) as u32)),
                ..query.clone()
            };
            let got = state
                .store
                .listing_chunk(ctx.bucket, &ctx.collection, &q, format, CHUNK_BYTES + CHUNK_BYTES / 4)
                .await;
            let (bytes, n, next) = match got {
                Ok(c) => c,
                Err(e) => return out.fail(crate::streaming::Cut(e.to_string())).await,
            };
            sent += n;
            limit = chunk_limit(bytes.len(), n);
            chunk = bytes;
            cursor = next;
        }
        format.close(&mut chunk);
        out.send(chunk).await;
    })
}

/// How many records the next read takes: about [`CHUNK_BYTES`] of them, by the size of
/// the last ones.
fn chunk_limit(bytes: usize, records: u64) -> u32 {
    let each = (bytes / records.max(1) as usize).max(1);
    (CHUNK_BYTES / each).clamp(1, 1000) as u32
}

/// About the bytes one record takes in a listing: payload, id and the JSON around them.
fn rendered_size(b: &syncstead_proto::Bso) -> usize {
    b.payload.len() + b.id.len() + 48
}

/// Bodies with more payload than this are parsed or rendered on a blocking thread.
const OFFLOAD_BYTES: usize = 64 * 1024;

/// Appends a listing's first records (S15-070, S15-085), releasing each as soon as it is
/// written so a chunk is never held twice.
fn render_chunk(out: &mut Vec<u8>, bsos: Vec<syncstead_proto::Bso>, format: ListingFormat) {
    out.reserve(bsos.iter().map(rendered_size).sum::<usize>());
    for (i, bso) in bsos.into_iter().enumerate() {
        format.push(out, &bso.as_ref(), i == 0);
    }
}

async fn get_bso(State(state): State<AppState>, ctx: HawkUser) -> Result<Response, ApiError> {
    let bso = state
        .store
        .get_bso(ctx.bucket, &ctx.collection, &ctx.id, ctx.pre)
        .await?;
    let body = serde_json::to_string(&bso).map_err(ApiError::internal)?;
    Ok(json_response(StatusCode::OK, bso.modified, body))
}

// ---- writes --------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyType {
    Json,
    Newlines,
}

/// S15-087, S15-100: JSON (also sent as text/plain) or, for POST, newline-delimited JSON.
fn body_type(headers: &HeaderMap, allow_newlines: bool) -> Result<BodyType, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::UnsupportedMediaType)?;
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" | "text/plain" => Ok(BodyType::Json),
        "application/newlines" if allow_newlines => Ok(BodyType::Newlines),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

async fn put_bso(
    State(state): State<AppState>,
    ctx: HawkUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    body_type(&headers, false)?;
    let body = crate::body::read(&state, &headers, body).await?;
    let mut bso = parse_put_body(&body.bytes)?;
    if bso.payload_len() as u64 > state.settings.limits.max_record_payload_bytes {
        return Err(ApiError::BadRequest(respcode::INVALID_WBO));
    }
    if ctx.collection == "crypto" && bso.payload.as_deref().is_some_and(is_known_bad_crypto_payload) {
        return Err(ApiError::BadRequest(respcode::INVALID_WBO));
    }
    bso.id = ctx.id;
    let t = state
        .store
        .put_bso(ctx.bucket, &ctx.collection, bso, ctx.pre, state.settings.write_limits())
        .await?;
    Ok(json_response(StatusCode::OK, t, t.to_string()))
}

/// S15-104: the client's declared counts, checked against the limits.
fn check_declared_limits(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let l = &state.settings.limits;
    for (name, limit) in [
        (X_WEAVE_RECORDS, l.max_post_records),
        (X_WEAVE_BYTES, l.max_post_bytes),
        (X_WEAVE_TOTAL_RECORDS, l.max_total_records),
        (X_WEAVE_TOTAL_BYTES, l.max_total_bytes),
    ] {
        if let Some(v) = headers.get(name) {
            let n: u64 = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(ApiError::BadRequest(respcode::NONE))?;
            if n > limit {
                return Err(ApiError::BadRequest(respcode::SIZE_LIMIT_EXCEEDED));
            }
        }
    }
    Ok(())
}

/// Splits parsed items into the ones to store and per-item failures (S15-105, S15-106).
fn apply_post_limits(state: &AppState, items: Vec<PostItem>) -> (Vec<BsoInput>, BTreeMap<String, String>) {
    let l = &state.settings.limits;
    let mut valid = Vec::with_capacity(items.len());
    let mut failed = BTreeMap::new();
    let mut running: u64 = 0;
    for item in items {
        match item {
            PostItem::Invalid { id, reason } => {
                failed.insert(id, reason);
            }
            PostItem::Valid(bso) => {
                let len = bso.payload_len() as u64;
                running += len;
                if len > l.max_record_payload_bytes || running > l.max_post_bytes {
                    failed.insert(bso.id, "retry bytes".into());
                } else if valid.len() as u64 >= l.max_post_records {
                    failed.insert(bso.id, "retry bso".into());
                } else {
                    valid.push(bso);
                }
            }
        }
    }
    (valid, failed)
}

async fn post_collection(
    State(state): State<AppState>,
    ctx: HawkUser,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = body_type(&headers, true)?;
    let query = PostQuery::parse(query.as_deref().unwrap_or(""))?;
    check_declared_limits(&state, &headers)?;
    let crate::body::Read { bytes, room: _room } = crate::body::read(&state, &headers, body).await?;
    let newlines = kind == BodyType::Newlines;
    // The raw body goes once parsed; its share of the budget stays until the write is done.
    let items = if bytes.len() > OFFLOAD_BYTES {
        tokio::task::spawn_blocking(move || parse_post_body(&bytes, newlines))
            .await
            .map_err(ApiError::internal)??
    } else {
        parse_post_body(&bytes, newlines)?
    };
    if ctx.collection == "crypto"
        && items
            .iter()
            .any(|i| matches!(i, PostItem::Valid(b) if b.payload.as_deref().is_some_and(is_known_bad_crypto_payload)))
    {
        return Err(ApiError::BadRequest(respcode::INVALID_WBO));
    }
    let (valid, failed) = apply_post_limits(&state, items);
    let success: Vec<String> = valid.iter().map(|b| b.id.clone()).collect();
    let limits = state.settings.write_limits();
    let store = &state.store;
    let (user, coll, pre) = (ctx.bucket, ctx.collection.as_str(), ctx.pre);
    match (query.batch, query.commit) {
        (BatchParam::None, _) | (BatchParam::New, true) => {
            let t = store.post_bsos(user, coll, valid, pre, limits).await?;
            let body = json!({ "modified": t, "success": success, "failed": failed });
            Ok(json_response(StatusCode::OK, t, body.to_string()))
        }
        (BatchParam::New, false) => {
            let (batch, modified) = store.create_batch(user, coll, valid, pre, limits).await?;
            let body = json!({ "batch": batch, "success": success, "failed": failed });
            Ok(json_response(StatusCode::ACCEPTED, modified, body.to_string()))
        }
        (BatchParam::Existing(batch), false) => {
            let modified = store.append_batch(user, coll, &batch, valid, pre, limits).await?;
            let body = json!({ "batch": batch, "success": success, "failed": failed });
            Ok(json_response(StatusCode::ACCEPTED, modified, body.to_string()))
        }
        (BatchParam::Existing(batch), true) => {
            let t = store.commit_batch(user, coll, &batch, valid, pre, limits).await?;
            let body = json!({ "modified": t, "success": success, "failed": failed });
            Ok(json_response(StatusCode::OK, t, body.to_string()))
        }
    }
}

// ---- deletes -------------------------------------------------------------------------

async fn delete_bso(State(state): State<AppState>, ctx: HawkUser) -> Result<Response, ApiError> {
    let t = state
        .store
        .delete_bso(ctx.bucket, &ctx.collection, &ctx.id, ctx.pre)
        .await?;
    Ok(json_response(StatusCode::OK, t, json!({ "modified": t }).to_string()))
}

async fn delete_collection(
    State(state): State<AppState>,
    ctx: HawkUser,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    match delete_ids(query.as_deref().unwrap_or(""))? {
        // An empty id list deletes nothing (spec README §5, S15-144).
        Some(ids) if ids.is_empty() => {
            let q = CollectionQuery {
                ids: Some(Vec::new()),
                ..Default::default()
            };
            let page = state
                .store
                .get_collection(ctx.bucket, &ctx.collection, &q, ctx.pre)
                .await?;
            Ok(json_response(StatusCode::OK, page.modified, page.modified.to_string()))
        }
        Some(ids) => {
            let t = state
                .store
                .delete_bsos(ctx.bucket, &ctx.collection, ids, ctx.pre)
                .await?;
            Ok(json_response(StatusCode::OK, t, t.to_string()))
        }
        None => {
            let d = state
                .store
                .delete_collection(ctx.bucket, &ctx.collection, ctx.pre)
                .await?;
            Ok(json_response(StatusCode::OK, d.previous, d.storage.to_string()))
        }
    }
}

async fn delete_storage(State(state): State<AppState>, ctx: HawkUser) -> Result<Response, ApiError> {
    let previous = state.store.delete_storage(ctx.bucket, ctx.pre).await?;
    Ok(json_response(StatusCode::OK, previous, "null".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<Format, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        negotiate(&h)
    }

    #[test]
    fn s15_084_accept_negotiation() {
        assert!(matches!(accept("application/json;q=0.9,*/*;q=0.2"), Ok(Format::Json)));
        assert!(matches!(accept("application/newlines"), Ok(Format::Newlines)));
        assert!(matches!(
            accept("x/yy;q=1, application/newlines;q=0.5"),
            Ok(Format::Newlines)
        ));
        assert!(matches!(accept("x/yy"), Err(ApiError::NotAcceptable)));
        assert!(matches!(negotiate(&HeaderMap::new()), Ok(Format::Json)));
    }
}
