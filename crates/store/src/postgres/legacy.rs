//! Storage 1.1 in PostgreSQL, sharing the `bsos` table (buckets of 1.1 accounts are
//! negative), with the same rules as the SQLite backend.

use async_trait::async_trait;
use syncstead_proto::wbo::{Wbo, WboInput, WboQuery};
use syncstead_proto::SyncTimestamp;
use tokio_postgres::types::ToSql;

use super::{refs, ts, Param, PgStore};
use crate::{LegacyStore, StoreError, StoreResult, UserId, WboCollection};

const COLUMNS: &str = "id, parentid, predecessorid, sortindex, modified, payload";

fn wbo_from_row(r: &tokio_postgres::Row, full: bool) -> Wbo {
    Wbo {
        id: r.get(0),
        parentid: if full { r.get(1) } else { None },
        predecessorid: if full { r.get(2) } else { None },
        sortindex: if full { r.get(3) } else { None },
        modified: ts(r.get(4)),
        payload: if full {
            r.get::<_, Option<String>>(5).filter(|p| !p.is_empty())
        } else {
            None
        },
    }
}

/// The WHERE clause of a 1.1 selection (after user and collection, `$1` and `$2`).
fn selectors(q: &WboQuery, now: SyncTimestamp, args: &mut Vec<Param>) -> String {
    let mut sql = String::new();
    let arg = |args: &mut Vec<Param>, v: Param| -> String {
        args.push(v);
        format!("${}", args.len())
    };
    if let Some(ids) = &q.ids {
        let p = arg(args, Box::new(ids.clone()));
        sql.push_str(&format!(" AND id = ANY({p})"));
    }
    for (col, v) in [("parentid", &q.parentid), ("predecessorid", &q.predecessorid)] {
        if let Some(v) = v {
            let p = arg(args, Box::new(v.clone()));
            sql.push_str(&format!(" AND {col} = {p}"));
        }
    }
    for (op, v) in [("<", q.older), (">", q.newer)] {
        if let Some(t) = v {
            let p = arg(args, Box::new(t.as_millis()));
            sql.push_str(&format!(" AND modified {op} {p}"));
        }
    }
    for (op, v) in [(">", q.index_above), ("<", q.index_below)] {
        if let Some(n) = v {
            let p = arg(args, Box::new(n));
            sql.push_str(&format!(" AND sortindex {op} {p}::BIGINT"));
        }
    }
    let p = arg(args, Box::new(now.as_millis()));
    sql.push_str(&format!(" AND expiry > {p}"));
    sql
}

#[async_trait]
impl LegacyStore for PgStore {
    async fn wbo_collections(&self, user: UserId) -> StoreResult<Vec<WboCollection>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT c.name, MAX(b.modified),
                        SUM(CASE WHEN b.expiry > $2 THEN 1 ELSE 0 END)::BIGINT,
                        SUM(CASE WHEN b.expiry > $2 THEN b.payload_size ELSE 0 END)::BIGINT
                 FROM bsos b JOIN collections c ON c.id = b.collection_id
                 WHERE b.user_id = $1 GROUP BY c.name",
                &[&user, &SyncTimestamp::now().as_millis()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| WboCollection {
                name: r.get(0),
                modified: ts(r.get(1)),
                count: r.get::<_, i64>(2).max(0) as u64,
                bytes: r.get::<_, i64>(3).max(0) as u64,
            })
            .collect())
    }

    async fn wbo_get(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<Vec<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(Vec::new());
        };
        let mut args: Vec<Param> = vec![Box::new(user), Box::new(coll)];
        let mut sql = format!("SELECT {COLUMNS} FROM bsos WHERE user_id = $1 AND collection_id = $2");
        sql.push_str(&selectors(query, SyncTimestamp::now(), &mut args));
        sql.push_str(crate::wbo_order_by(query.sort));
        if let Some(limit) = query.limit {
            args.push(Box::new(limit.min(i64::MAX as u64) as i64));
            sql.push_str(&format!(" LIMIT ${}", args.len()));
            args.push(Box::new(query.offset.unwrap_or(0).min(i64::MAX as u64) as i64));
            sql.push_str(&format!(" OFFSET ${}", args.len()));
        }
        let c = self.client().await?;
        let rows = c.query(&sql, &refs(&args)).await?;
        Ok(rows.iter().map(|r| wbo_from_row(r, query.full)).collect())
    }

    async fn wbo_get_one(&self, user: UserId, collection: &str, id: &str) -> StoreResult<Option<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(None);
        };
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4"
                ),
                &[&user, &coll, &id, &SyncTimestamp::now().as_millis()],
            )
            .await?;
        Ok(row.map(|r| wbo_from_row(&r, true)))
    }

    async fn wbo_put(
        &self,
        user: UserId,
        collection: &str,
        wbos: Vec<WboInput>,
        if_unmodified_since: Option<SyncTimestamp>,
    ) -> StoreResult<(SyncTimestamp, Vec<SyncTimestamp>)> {
        let coll = self.ensure_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&user]).await?;
        let newest = check_unmodified(&tx, user, coll, if_unmodified_since).await?;
        // The collection's time is its newest item's: a write must come strictly after it,
        // or X-If-Unmodified-Since could not tell the two apart (S11-072).
        let now = super::later_than(newest).await;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry, parentid, predecessorid)
                 VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8, $9, $10)
                 ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
                   sortindex = COALESCE($4, b.sortindex),
                   payload = COALESCE($5, b.payload),
                   payload_size = CASE WHEN $5::TEXT IS NULL THEN b.payload_size ELSE excluded.payload_size END,
                   modified = CASE WHEN $5::TEXT IS NULL THEN b.modified ELSE $7 END,
                   expiry = CASE WHEN $11::BIGINT IS NULL THEN b.expiry ELSE excluded.expiry END,
                   parentid = COALESCE($9, b.parentid),
                   predecessorid = COALESCE($10, b.predecessorid)
                 RETURNING modified",
            )
            .await?;
        let mut modified = Vec::with_capacity(wbos.len());
        for w in &wbos {
            let expiry = w.ttl.map_or(SyncTimestamp::NEVER, |t| now.plus_seconds(t.into()));
            let params: [&(dyn ToSql + Sync); 11] = [
                &user,
                &coll,
                &w.id,
                &w.sortindex,
                &w.payload,
                &(w.payload.as_ref().map_or(0, String::len) as i64),
                &now.as_millis(),
                &expiry.as_millis(),
                &w.parentid,
                &w.predecessorid,
                &w.ttl.map(i64::from),
            ];
            let m: i64 = tx.query_one(&stmt, &params).await?.get(0);
            modified.push(ts(m));
        }
        tx.commit().await?;
        Ok((now, modified))
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
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&user]).await?;
        let now = SyncTimestamp::now();
        check_unmodified(&tx, user, coll, if_unmodified_since).await?;
        let mut args: Vec<Param> = vec![Box::new(user), Box::new(coll)];
        // Selectors look at live items; a plain delete takes expired ones too.
        let mut sql = String::from("DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2");
        if *query != WboQuery::default() {
            sql.push_str(&selectors(query, now, &mut args));
        }
        tx.execute(&sql, &refs(&args)).await?;
        tx.commit().await?;
        Ok(now)
    }
}

/// S11-072: the collection's time is its newest item (expired ones included); returns it.
async fn check_unmodified(
    tx: &deadpool_postgres::Transaction<'_>,
    user: UserId,
    coll: i32,
    since: Option<SyncTimestamp>,
) -> StoreResult<SyncTimestamp> {
    let newest: Option<i64> = tx
        .query_one(
            "SELECT MAX(modified) FROM bsos WHERE user_id = $1 AND collection_id = $2",
            &[&user, &coll],
        )
        .await?
        .get(0);
    let newest = ts(newest.unwrap_or(0));
    if since.is_some_and(|since| newest > since) {
        return Err(StoreError::PreconditionFailed(newest));
    }
    Ok(newest)
}
