//! Token-server records in SQLite: node assignment and the user-record rules of
//! tokenserver.md §5, each token request in one write transaction.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};
use syncstead_proto::tokenserver::{updated_values, validate, MAX_GENERATION};

use super::SqliteStore;
use crate::tokens::{node_score, Assignment, Login, LoginError, NewUserPolicy, Node, NodeUpdate, UserRow as Row};
use crate::{StoreResult, TokenStore};

/// How many of an account's most recent records are considered (T10-030).
const RECENT_RECORDS: i64 = 20;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn node_from_row(r: &rusqlite::Row) -> rusqlite::Result<Node> {
    Ok(Node {
        id: r.get(0)?,
        url: r.get(1)?,
        capacity: r.get(2)?,
        current_load: r.get(3)?,
        available: r.get(4)?,
        downed: r.get::<_, i64>(5)? != 0,
        backoff: r.get::<_, i64>(6)? != 0,
    })
}

const NODE_COLUMNS: &str = "id, node, capacity, current_load, available, downed, backoff";

/// T10-070: the least loaded node with room, releasing capacity up to five times.
fn allocate_node(tx: &Transaction, release_rate: f64) -> Result<(i64, String), LoginError> {
    for _ in 0..5 {
        let candidates: Vec<Node> = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes
                 WHERE available > 0 AND capacity > current_load AND downed = 0 AND backoff = 0"
            ))?;
            let rows = stmt.query_map([], node_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        if let Some(best) = candidates.iter().min_by(|a, b| node_score(a).total_cmp(&node_score(b))) {
            tx.prepare_cached(
                "UPDATE nodes SET current_load = current_load + 1, available = MAX(available - 1, 0) WHERE id = ?1",
            )?
            .execute([best.id])?;
            return Ok((best.id, best.url.clone()));
        }
        let released = tx
            .prepare_cached(
                "UPDATE nodes SET available = MIN(MAX(CAST(capacity * ?1 AS INTEGER), 1), capacity - current_load)
                 WHERE available <= 0 AND capacity > current_load AND downed = 0",
            )?
            .execute([release_rate])?;
        if released == 0 {
            break;
        }
    }
    Err(LoginError::NoNode)
}

fn insert_row(
    tx: &Transaction,
    email: &str,
    generation: i64,
    client_state: &str,
    keys_changed_at: Option<i64>,
    created_at: i64,
    node: (i64, String),
) -> Result<Row, LoginError> {
    tx.prepare_cached(
        "INSERT INTO users (email, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
    )?
    .execute(params![
        email,
        generation,
        client_state,
        created_at,
        node.0,
        keys_changed_at
    ])?;
    Ok(Row {
        uid: tx.last_insert_rowid(),
        generation,
        client_state: client_state.to_string(),
        created_at,
        replaced_at: None,
        nodeid: node.0,
        keys_changed_at,
        node: Some(node.1),
    })
}

fn may_sign_up(tx: &Transaction, login: &Login, policy: &NewUserPolicy) -> Result<(), LoginError> {
    if !policy.open {
        return Err(LoginError::NewUsersDisabled);
    }
    if policy.allow_list_only {
        let listed: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM allowed_accounts WHERE fxa_uid = ?1")?
            .query_row([&login.fxa_uid], |r| r.get(0))
            .optional()?;
        if listed.is_none() {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    if let Some(max) = policy.max_users {
        let n: i64 = tx
            .prepare_cached("SELECT COUNT(DISTINCT email) FROM users WHERE replaced_at IS NULL")?
            .query_row([], |r| r.get(0))?;
        if n as u64 >= max {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    Ok(())
}

/// The whole of tokenserver.md §5.1–5.3 for one request.
fn login(tx: &Transaction, login: &Login, policy: &NewUserPolicy) -> Result<Assignment, LoginError> {
    let now = now_ms();
    let rows: Vec<Row> = {
        let mut stmt = tx.prepare_cached(
            "SELECT u.uid, u.generation, u.client_state, u.created_at, u.replaced_at, u.nodeid, u.keys_changed_at,
                    CASE WHEN n.downed = 0 THEN n.node END
             FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
             WHERE u.email = ?1 ORDER BY u.created_at DESC, u.uid DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![login.email, RECENT_RECORDS], |r| {
            Ok(Row {
                uid: r.get(0)?,
                generation: r.get(1)?,
                client_state: r.get(2)?,
                created_at: r.get(3)?,
                replaced_at: r.get(4)?,
                nodeid: r.get(5)?,
                keys_changed_at: r.get(6)?,
                node: r.get(7)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let claims = &login.claims;

    // T10-040: a first record from the request's own values.
    if rows.is_empty() {
        may_sign_up(tx, login, policy)?;
        let node = allocate_node(tx, policy.release_rate)?;
        let generation = claims.generation.unwrap_or(0);
        let row = insert_row(
            tx,
            &login.email,
            generation,
            &claims.client_state,
            claims.keys_changed_at,
            now,
            node,
        )?;
        return Ok(row.assignment());
    }

    // T10-030: the current record has the greatest (generation, created_at).
    let current_index = rows
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| (r.generation, r.created_at))
        .map(|(i, _)| i)
        .expect("rows is not empty");
    let mut current = rows[current_index].clone();
    let mut old_states: Vec<String> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if i == current_index {
            continue;
        }
        if row.client_state != current.client_state && !old_states.contains(&row.client_state) {
            old_states.push(row.client_state.clone());
        }
        // T10-041: old records left unreplaced by a race are marked now.
        if row.replaced_at.is_none() {
            tx.prepare_cached("UPDATE users SET replaced_at = ?1 WHERE uid = ?2")?
                .execute(params![current.created_at, row.uid])?;
        }
    }

    // T10-042/043: a replaced record, or one whose node is gone or down, moves to a new node.
    let retired = current.generation == MAX_GENERATION;
    if current.node.is_none() && retired {
        return Err(LoginError::RetiredWithoutNode);
    }
    if (current.replaced_at.is_some() || current.node.is_none()) && !retired {
        if current.replaced_at.is_none() {
            tx.prepare_cached("UPDATE users SET replaced_at = ?1 WHERE uid = ?2")?
                .execute(params![now, current.uid])?;
        }
        let node = allocate_node(tx, policy.release_rate)?;
        let created = now.max(current.created_at + 1);
        current = insert_row(
            tx,
            &login.email,
            current.generation,
            &current.client_state,
            current.keys_changed_at,
            created,
            node,
        )?;
    }

    validate(&current.stored(), claims, &old_states).map_err(LoginError::Rejected)?;
    let (generation, keys_changed_at) = updated_values(&current.stored(), claims);

    if claims.client_state != current.client_state {
        // T10-061: new keys, new bucket on the same node; everything older is replaced.
        let created = now.max(current.created_at + 1);
        let node = (current.nodeid, current.node.clone().unwrap_or_default());
        let row = insert_row(
            tx,
            &login.email,
            generation,
            &claims.client_state,
            keys_changed_at,
            created,
            node,
        )?;
        tx.prepare_cached(
            "UPDATE users SET replaced_at = ?1 WHERE email = ?2 AND replaced_at IS NULL AND created_at < ?1",
        )?
        .execute(params![created, login.email])?;
        return Ok(row.assignment());
    }
    if generation != current.generation || keys_changed_at != current.keys_changed_at {
        // T10-062: in place, never decreasing.
        tx.prepare_cached(
            "UPDATE users SET generation = ?1, keys_changed_at = ?2
             WHERE uid = ?3 AND generation <= ?1
               AND COALESCE(keys_changed_at, 0) <= COALESCE(?2, keys_changed_at, 0) AND replaced_at IS NULL",
        )?
        .execute(params![generation, keys_changed_at, current.uid])?;
        current.generation = generation;
        current.keys_changed_at = keys_changed_at;
    }
    Ok(current.assignment())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn login(&self, request: Login, policy: NewUserPolicy) -> Result<Assignment, LoginError> {
        // The outcome travels inside Ok so that a refusal still commits the bookkeeping
        // of T10-041/042, as the spec asks.
        let outcome = self
            .submit(None, 0, move |tx| Ok(login(tx, &request, &policy)))
            .await
            .map_err(LoginError::Store)?;
        outcome
    }

    async fn nodes(&self) -> StoreResult<Vec<Node>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
            let rows = stmt.query_map([], node_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn add_node(&self, url: &str, capacity: i64, if_absent: bool) -> StoreResult<bool> {
        let url = url.trim_end_matches('/').to_string();
        self.submit(None, 0, move |tx| {
            let sql = if if_absent {
                "INSERT OR IGNORE INTO nodes (node, available, capacity) VALUES (?1, ?2, ?2)"
            } else {
                "INSERT INTO nodes (node, available, capacity) VALUES (?1, ?2, ?2)"
            };
            match tx.execute(sql, params![url, capacity]) {
                Ok(n) => Ok(n > 0),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn update_node(&self, url: &str, update: NodeUpdate) -> StoreResult<bool> {
        let url = url.trim_end_matches('/').to_string();
        self.submit(None, 0, move |tx| {
            let n = tx.execute(
                "UPDATE nodes SET capacity = COALESCE(?2, capacity), available = COALESCE(?3, available),
                        downed = COALESCE(?4, downed), backoff = COALESCE(?5, backoff)
                 WHERE node = ?1",
                params![url, update.capacity, update.available, update.downed, update.backoff],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn rename_node(&self, from: &str, to: &str) -> StoreResult<bool> {
        let (from, to) = (
            from.trim_end_matches('/').to_string(),
            to.trim_end_matches('/').to_string(),
        );
        self.submit(None, 0, move |tx| {
            Ok(tx.execute("UPDATE nodes SET node = ?2 WHERE node = ?1", [from, to])? > 0)
        })
        .await
    }

    async fn remove_node(&self, url: &str) -> StoreResult<bool> {
        let url = url.trim_end_matches('/').to_string();
        self.submit(None, 0, move |tx| {
            Ok(tx.execute("DELETE FROM nodes WHERE node = ?1", [url])? > 0)
        })
        .await
    }

    async fn allow_account(&self, fxa_uid: &str, allow: bool) -> StoreResult<bool> {
        let fxa_uid = fxa_uid.to_string();
        self.submit(None, 0, move |tx| {
            let n = if allow {
                tx.execute(
                    "INSERT OR IGNORE INTO allowed_accounts (fxa_uid, added_at) VALUES (?1, ?2)",
                    params![fxa_uid, now_ms()],
                )?
            } else {
                tx.execute("DELETE FROM allowed_accounts WHERE fxa_uid = ?1", [fxa_uid])?
            };
            Ok(n > 0)
        })
        .await
    }

    async fn allowed_accounts(&self) -> StoreResult<Vec<String>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached("SELECT fxa_uid FROM allowed_accounts ORDER BY added_at")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn token_users(&self) -> StoreResult<Vec<(String, i64, String)>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT u.email, u.uid, COALESCE(n.node, '') FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
                 WHERE u.replaced_at IS NULL ORDER BY u.uid",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn purge_replaced(&self, node: &str, before_ms: i64) -> StoreResult<u64> {
        let node = node.trim_end_matches('/').to_string();
        let purged: Vec<i64> = self
            .submit(None, 0, move |tx| {
                let uids: Vec<i64> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT u.uid FROM users u JOIN nodes n ON n.id = u.nodeid
                         WHERE n.node = ?1 AND u.replaced_at IS NOT NULL AND u.replaced_at < ?2 AND u.data_purged = 0
                         LIMIT 100",
                    )?;
                    let rows = stmt.query_map(params![node, before_ms], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                for uid in &uids {
                    super::delete_bucket(tx, *uid)?;
                    tx.prepare_cached("UPDATE users SET data_purged = 1 WHERE uid = ?1")?
                        .execute([uid])?;
                }
                Ok(uids)
            })
            .await?;
        let mut times = self.storage_times.lock().expect("storage times lock");
        for uid in &purged {
            times.remove(uid);
        }
        Ok(purged.len() as u64)
    }
}
