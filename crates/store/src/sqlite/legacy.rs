//! Storage 1.1 in SQLite, sharing the `bsos` table (buckets of 1.1 accounts are negative).

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension};
use syncstead_proto::wbo::{Wbo, WboInput, WboQuery};
use syncstead_proto::SyncTimestamp;

use super::{ts, SqliteStore};
use crate::{LegacyStore, StoreError, StoreResult, UserId, WboCollection};

const COLUMNS: &str = "id, parentid, predecessorid, sortindex, modified, payload";

fn wbo_from_row(r: &rusqlite::Row, full: bool) -> rusqlite::Result<Wbo> {
    Ok(Wbo {
        id: r.get(0)?,
        parentid: if full { r.get(1)? } else { None },
        predecessorid: if full { r.get(2)? } else { None },
        sortindex: if full { r.get(3)? } else { None },
        modified: ts(r.get(4)?),
        payload: if full {
            r.get::<_, Option<String>>(5)?.filter(|p| !p.is_empty())
        } else {
            None
        },
    })
}

/// The WHERE clause of a 1.1 selection (without user and collection).
fn selectors(q: &WboQuery, now: SyncTimestamp, args: &mut Vec<Value>) -> String {
    let mut sql = String::new();
    if let Some(ids) = &q.ids {
        sql.push_str(" AND id IN (");
        sql.push_str(&vec!["?"; ids.len().max(1)].join(","));
        sql.push(')');
        if ids.is_empty() {
            args.push(Value::Null);
        }
        args.extend(ids.iter().map(|i| Value::from(i.clone())));
    }
    for (col, v) in [("parentid", &q.parentid), ("predecessorid", &q.predecessorid)] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(v.clone().into());
        }
    }
    for (cond, v) in [(" AND modified < ?", q.older), (" AND modified > ?", q.newer)] {
        if let Some(t) = v {
            sql.push_str(cond);
            args.push(t.as_millis().into());
        }
    }
    for (cond, v) in [
        (" AND sortindex > ?", q.index_above),
        (" AND sortindex < ?", q.index_below),
    ] {
        if let Some(n) = v {
            sql.push_str(cond);
            args.push(n.into());
        }
    }
    sql.push_str(" AND expiry > ?");
    args.push(now.as_millis().into());
    sql
}

#[async_trait]
impl LegacyStore for SqliteStore {
    async fn wbo_collections(&self, user: UserId) -> StoreResult<Vec<WboCollection>> {
        self.read(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT c.name, MAX(b.modified),
                        SUM(CASE WHEN b.expiry > ?2 THEN 1 ELSE 0 END),
                        SUM(CASE WHEN b.expiry > ?2 THEN b.payload_size ELSE 0 END)
                 FROM bsos b JOIN collections c ON c.id = b.collection_id
                 WHERE b.user_id = ?1 GROUP BY c.name",
            )?;
            let rows = stmt.query_map(params![user, SyncTimestamp::now().as_millis()], |r| {
                Ok(WboCollection {
                    name: r.get(0)?,
                    modified: ts(r.get(1)?),
                    count: r.get::<_, i64>(2)?.max(0) as u64,
                    bytes: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn wbo_get(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<Vec<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(Vec::new());
        };
        let q = query.clone();
        self.read(move |tx| {
            let mut args: Vec<Value> = vec![user.into(), coll.into()];
            let mut sql = format!("SELECT {COLUMNS} FROM bsos WHERE user_id = ? AND collection_id = ?");
            sql.push_str(&selectors(&q, SyncTimestamp::now(), &mut args));
            sql.push_str(crate::wbo_order_by(q.sort));
            if let Some(limit) = q.limit {
                sql.push_str(" LIMIT ? OFFSET ?");
                args.push((limit.min(i64::MAX as u64) as i64).into());
                args.push((q.offset.unwrap_or(0).min(i64::MAX as u64) as i64).into());
            }
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| wbo_from_row(r, q.full))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn wbo_get_one(&self, user: UserId, collection: &str, id: &str) -> StoreResult<Option<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(None);
        };
        let id = id.to_string();
        self.read(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM bsos WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3 AND expiry > ?4"
                ))?
                .query_row(params![user, coll, id, SyncTimestamp::now().as_millis()], |r| {
                    wbo_from_row(r, true)
                })
                .optional()?)
        })
        .await
    }

    async fn wbo_put(
        &self,
        user: UserId,
        collection: &str,
        wbos: Vec<WboInput>,
        if_unmodified_since: Option<SyncTimestamp>,
    ) -> StoreResult<(SyncTimestamp, Vec<SyncTimestamp>)> {
        let coll = self.ensure_collection(collection).await?;
        let bytes = wbos.iter().map(|w| w.payload.as_ref().map_or(0, String::len)).sum();
        self.write(None, bytes, move |tx, now| {
            let newest = check_unmodified(tx, user, coll, if_unmodified_since)?;
            // The collection's time is its newest item's, so a write in the same
            // centisecond as the last one would be invisible to X-If-Unmodified-Since
            // (a lost update between two devices): it waits for the next tick instead.
            if newest >= now {
                return Err(StoreError::Conflict);
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO bsos (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry, parentid, predecessorid)
                 VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ''), ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
                   sortindex = COALESCE(?4, bsos.sortindex),
                   payload = COALESCE(?5, bsos.payload),
                   payload_size = CASE WHEN ?5 IS NULL THEN bsos.payload_size ELSE excluded.payload_size END,
                   modified = CASE WHEN ?5 IS NULL THEN bsos.modified ELSE ?7 END,
                   expiry = CASE WHEN ?11 IS NULL THEN bsos.expiry ELSE excluded.expiry END,
                   parentid = COALESCE(?9, bsos.parentid),
                   predecessorid = COALESCE(?10, bsos.predecessorid)
                 RETURNING modified",
            )?;
            let mut modified = Vec::with_capacity(wbos.len());
            for w in &wbos {
                let expiry = w.ttl.map_or(SyncTimestamp::NEVER, |t| now.plus_seconds(t.into()));
                let m: i64 = stmt.query_row(
                    params![
                        user,
                        coll,
                        w.id,
                        w.sortindex,
                        w.payload,
                        w.payload.as_ref().map_or(0, String::len) as i64,
                        now.as_millis(),
                        expiry.as_millis(),
                        w.parentid,
                        w.predecessorid,
                        w.ttl
                    ],
                    |r| r.get(0),
                )?;
                modified.push(ts(m));
            }
            Ok((now, modified))
        })
        .await
    }

    async fn wbo_delete(
        &self,
        user: UserId,
        collection: &str,
        query: &WboQuery,
        if_unmodified_since: Option<SyncTimestamp>,
    ) -> StoreResult<SyncTimestamp> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(SyncTimestamp::now());
        };
        let q = query.clone();
        self.submit(None, super::HEAVY, move |tx| {
            let now = SyncTimestamp::now();
            check_unmodified(tx, user, coll, if_unmodified_since)?;
            let mut args: Vec<Value> = vec![user.into(), coll.into()];
            // Selectors look at live items; a plain delete takes expired ones too.
            let plain = q == WboQuery::default();
            let mut sql = String::from("DELETE FROM bsos WHERE user_id = ? AND collection_id = ?");
            if !plain {
                let mut inner = String::from("SELECT rowid FROM bsos WHERE user_id = ? AND collection_id = ?");
                let mut inner_args: Vec<Value> = vec![user.into(), coll.into()];
                inner.push_str(&selectors(&q, now, &mut inner_args));
                sql.push_str(&format!(" AND rowid IN ({inner})"));
                args.extend(inner_args);
            }
            tx.execute(&sql, rusqlite::params_from_iter(args))?;
            Ok(now)
        })
        .await
    }
}

/// S11-072: the collection's time is its newest item (expired ones included); returns it.
fn check_unmodified(
    tx: &rusqlite::Transaction,
    user: UserId,
    coll: i64,
    since: Option<SyncTimestamp>,
) -> StoreResult<SyncTimestamp> {
    let newest: Option<i64> = tx
        .prepare_cached("SELECT MAX(modified) FROM bsos WHERE user_id = ?1 AND collection_id = ?2")?
        .query_row(params![user, coll], |r| r.get(0))?;
    let newest = ts(newest.unwrap_or(0));
    if since.is_some_and(|since| newest > since) {
        return Err(StoreError::PreconditionFailed(newest));
    }
    Ok(newest)
}
