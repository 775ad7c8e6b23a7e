//! Storage 1.1 (storage-1.1.md), written once for every backend. It shares the `bsos`
//! table with 1.5 (buckets of 1.1 accounts are negative): last writer wins, a collection's
//! time is its newest item's, and only payload writes move `modified`.

use std::sync::Arc;

use async_trait::async_trait;
use syncstead_proto::query::Sort;
use syncstead_proto::wbo::{Wbo, WboInput, WboQuery, WboSort};
use syncstead_proto::SyncTimestamp;

use crate::db::{Db, Engine, Read, HEAVY};
use crate::sql::{query_one, Arg, Lock, Row, Sql, Tx};
use crate::storage::{after_modified_key, limit_offset, order_by, used_bytes};
use crate::{LegacyStore, StoreError, StoreResult, UserId, WboCollection, WboWrite, WriteLimits};

const COLUMNS: &str = "id, parentid, predecessorid, sortindex, modified, payload";

fn wbo_from_row(mut r: Row, full: bool) -> StoreResult<Wbo> {
    Ok(Wbo {
        id: r.text(0)?,
        parentid: if full { r.opt_text(1)? } else { None },
        predecessorid: if full { r.opt_text(2)? } else { None },
        sortindex: if full { r.opt_i32(3)? } else { None },
        modified: r.time(4)?,
        // An empty payload is a value like any other and comes back as written.
        payload: if full { r.opt_text(5)? } else { None },
    })
}

fn sort(sort: WboSort) -> Sort {
    match sort {
        WboSort::Newest => Sort::Newest,
        WboSort::Oldest => Sort::Oldest,
        WboSort::Index => Sort::Index,
    }
}

/// The conditions of a 1.1 selection, after `user_id = $1 AND collection_id = $2`
/// (storage-1.1.md §3). Selectors look at live items only.
fn selectors<'q>(sql: &mut Sql<'q>, q: &'q WboQuery, now: SyncTimestamp, dialect: crate::sql::Dialect) {
    if let Some(ids) = &q.ids {
        let p = sql.arg(Arg::Texts(ids.iter().map(|i| Some(i.as_str())).collect()));
        sql.push(&format!(" AND {}", dialect.in_list("id", &p)));
    }
    for (col, v) in [("parentid", &q.parentid), ("predecessorid", &q.predecessorid)] {
        if let Some(v) = v {
            let p = sql.arg(v);
            sql.push(&format!(" AND {col} = {p}"));
        }
    }
    for (op, v) in [("<", q.older), (">", q.newer)] {
        if let Some(t) = v {
            let p = sql.arg(t);
            sql.push(&format!(" AND modified {op} {p}"));
        }
    }
    // The bounds may lie outside the column's 32 bits.
    for (op, v) in [(">", q.index_above), ("<", q.index_below)] {
        if let Some(n) = v {
            let p = sql.arg(n);
            sql.push(&format!(" AND sortindex {op} CAST({p} AS BIGINT)"));
        }
    }
    let p = sql.arg(now);
    sql.push(&format!(" AND expiry > {p}"));
}

impl<E: Engine> Db<E> {
    async fn wbo_listing(
        &self,
        user: UserId,
        collection: &str,
        query: &WboQuery,
        after: Option<(SyncTimestamp, String)>,
    ) -> StoreResult<Vec<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(Vec::new());
        };
        let q = query.clone();
        self.read("wbo_get", Read::Statement, move |tx| {
            Box::pin(async move {
                let sql = listing(tx.dialect(), user, coll, &q, COLUMNS, after.as_ref());
                tx.query(&sql.text, &sql.args)
                    .await?
                    .into_iter()
                    .map(|r| wbo_from_row(r, q.full))
                    .collect()
            })
        })
        .await
    }
}

/// The items a GET or count selects (§5.1), in order, `limit`/`offset` applied; with
/// `after` (newest or oldest first only), the items past that (modified, id) key.
fn listing<'q>(
    dialect: crate::sql::Dialect,
    user: UserId,
    coll: i64,
    q: &'q WboQuery,
    columns: &str,
    after: Option<&'q (SyncTimestamp, String)>,
) -> Sql<'q> {
    let mut sql = Sql::new(
        &format!("SELECT {columns} FROM bsos WHERE user_id = $1 AND collection_id = $2"),
        vec![user.into(), coll.into()],
    );
    selectors(&mut sql, q, SyncTimestamp::now(), dialect);
    if let Some((modified, id)) = after {
        let (m, i) = (sql.arg(*modified), sql.arg(id.as_str()));
        sql.push(&after_modified_key(q.sort == WboSort::Oldest, &m, &i));
    }
    sql.push(order_by(sort(q.sort)));
    if let Some(limit) = q.limit {
        let skip = q.offset.unwrap_or(0);
        limit_offset(&mut sql, dialect, Some(limit.min(i64::MAX as u64) as i64), skip);
    }
    sql
}

/// S11-072: the collection's time is its newest item (expired ones included); returns it,
/// or refuses when it is later than `since`.
async fn check_unmodified<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    since: Option<SyncTimestamp>,
) -> StoreResult<SyncTimestamp> {
    let newest = query_one(
        tx,
        "SELECT MAX(modified) FROM bsos WHERE user_id = $1 AND collection_id = $2",
        &[user.into(), coll.into()],
    )
    .await?
    .time(0)?;
    if since.is_some_and(|since| newest > since) {
        return Err(StoreError::PreconditionFailed(newest));
    }
    Ok(newest)
}

/// Fields left out keep their values; only a payload moves `modified`.
const PUT: &str = "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry, parentid, predecessorid)
     VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8, $9, $10)
     ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
       sortindex = COALESCE($4, b.sortindex),
       payload = COALESCE($5, b.payload),
       payload_size = CASE WHEN CAST($5 AS TEXT) IS NULL THEN b.payload_size ELSE excluded.payload_size END,
       modified = CASE WHEN CAST($5 AS TEXT) IS NULL THEN b.modified ELSE $7 END,
       expiry = CASE WHEN CAST($11 AS BIGINT) IS NULL THEN b.expiry ELSE excluded.expiry END,
       parentid = COALESCE($9, b.parentid),
       predecessorid = COALESCE($10, b.predecessorid)
     RETURNING modified";

async fn put<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    wbos: &[WboInput],
    since: Option<SyncTimestamp>,
    limits: WriteLimits,
) -> StoreResult<WboWrite> {
    tx.lock(Lock::Legacy(user)).await?;
    let newest = check_unmodified(tx, user, coll, since).await?;
    let now = SyncTimestamp::now();
    // S11-071: refused once the quota is used up, checked in the write's own transaction.
    let used_bytes = match limits.quota_bytes {
        Some(quota) => {
            let used = used_bytes(tx, user, now).await?;
            if used >= quota {
                return Err(StoreError::OverQuota);
            }
            Some(used)
        }
        None => None,
    };
    // The collection's time is its newest item's, so a write in the same centisecond as the
    // last one would be invisible to X-If-Unmodified-Since (a lost update between two
    // devices): it waits for the next tick instead.
    if newest >= now {
        return Err(StoreError::Conflict);
    }
    let mut modified = Vec::with_capacity(wbos.len());
    for w in wbos {
        let expiry = w.ttl.map_or(SyncTimestamp::NEVER, |t| now.plus_seconds(t.into()));
        let args = [
            user.into(),
            coll.into(),
            (&w.id).into(),
            w.sortindex.into(),
            w.payload.as_ref().into(),
            (w.payload.as_ref().map_or(0, String::len) as i64).into(),
            now.into(),
            expiry.into(),
            w.parentid.as_ref().into(),
            w.predecessorid.as_ref().into(),
            w.ttl.into(),
        ];
        modified.push(query_one(tx, PUT, &args).await?.time(0)?);
    }
    Ok(WboWrite {
        time: now,
        modified,
        used_bytes,
    })
}

#[async_trait]
impl<E: Engine> LegacyStore for Db<E> {
    async fn wbo_collections(&self, user: UserId) -> StoreResult<Vec<WboCollection>> {
        self.read("wbo_collections", Read::Statement, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT c.name, MAX(b.modified),
                                CAST(SUM(CASE WHEN b.expiry > $2 THEN 1 ELSE 0 END) AS BIGINT),
                                CAST(SUM(CASE WHEN b.expiry > $2 THEN b.payload_size ELSE 0 END) AS BIGINT)
                         FROM bsos b JOIN collections c ON c.id = b.collection_id
                         WHERE b.user_id = $1 GROUP BY c.name",
                        &[user.into(), SyncTimestamp::now().into()],
                    )
                    .await?;
                rows.into_iter()
                    .map(|mut r| {
                        Ok(WboCollection {
                            name: r.text(0)?,
                            modified: r.time(1)?,
                            count: r.count(2)?,
                            bytes: r.count(3)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn wbo_get(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<Vec<Wbo>> {
        self.wbo_listing(user, collection, query, None).await
    }

    async fn wbo_get_after(
        &self,
        user: UserId,
        collection: &str,
        query: &WboQuery,
        after: (SyncTimestamp, String),
    ) -> StoreResult<Vec<Wbo>> {
        self.wbo_listing(user, collection, query, Some(after)).await
    }

    async fn wbo_count(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<u64> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(0);
        };
        let q = query.clone();
        self.read("wbo_count", Read::Statement, move |tx| {
            Box::pin(async move {
                let rows = listing(tx.dialect(), user, coll, &q, "1", None);
                let count = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM ({}) AS listing", rows.text);
                query_one(tx, &count, &rows.args).await?.count(0)
            })
        })
        .await
    }

    async fn wbo_get_one(&self, user: UserId, collection: &str, id: &str) -> StoreResult<Option<Wbo>> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok(None);
        };
        let id = id.to_string();
        self.read("wbo_get_one", Read::Statement, move |tx| {
            Box::pin(async move {
                tx.query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4"
                    ),
                    &[user.into(), coll.into(), (&id).into(), SyncTimestamp::now().into()],
                )
                .await?
                .map(|r| wbo_from_row(r, true))
                .transpose()
            })
        })
        .await
    }

    async fn wbo_put(
        &self,
        user: UserId,
        collection: &str,
        wbos: Vec<WboInput>,
        if_unmodified_since: Option<SyncTimestamp>,
        limits: WriteLimits,
    ) -> StoreResult<WboWrite> {
        let cost = wbos.iter().map(|w| w.payload.as_ref().map_or(0, String::len)).sum();
        let wbos = Arc::new(wbos);
        self.in_collection(collection, |coll| {
            let wbos = wbos.clone();
            self.write("wbo_put", cost, move |tx| {
                let wbos = wbos.clone();
                Box::pin(async move { put(tx, user, coll, &wbos, if_unmodified_since, limits).await })
            })
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
        let q = Arc::new(query.clone());
        self.write("wbo_delete", HEAVY, move |tx| {
            let q = q.clone();
            Box::pin(async move {
                tx.lock(Lock::Legacy(user)).await?;
                let now = SyncTimestamp::now();
                check_unmodified(tx, user, coll, if_unmodified_since).await?;
                let mut sql = Sql::new(
                    "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2",
                    vec![user.into(), coll.into()],
                );
                // A plain delete takes expired items too.
                if *q != WboQuery::default() {
                    selectors(&mut sql, &q, now, tx.dialect());
                }
                tx.execute(&sql.text, &sql.args).await?;
                Ok(now)
            })
        })
        .await
    }
}
