//! Token-server records in PostgreSQL: node assignment and the user-record rules of
//! tokenserver.md §5, each token request in one transaction holding the account's
//! advisory lock (so two requests of one account never race to create records).

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use syncstead_proto::tokenserver::{updated_values, validate, MAX_GENERATION};

use super::{delete_bucket, PgStore, LOCK_LOGIN};
use crate::tokens::{node_score, Assignment, Login, LoginError, NewUserPolicy, Node, NodeUpdate, UserRow as Row};
use crate::{StoreError, StoreResult, TokenStore};

/// How many of an account's most recent records are considered (T10-030).
const RECENT_RECORDS: i64 = 20;

impl From<tokio_postgres::Error> for LoginError {
    fn from(e: tokio_postgres::Error) -> Self {
        LoginError::Store(e.into())
    }
}

fn now_ms() -> i64 {
    syncstead_proto::SyncTimestamp::now().as_millis()
}

const NODE_COLUMNS: &str = "id, node, capacity, current_load, available, downed, backoff";

fn node_from_row(r: &tokio_postgres::Row) -> Node {
    Node {
        id: r.get(0),
        url: r.get(1),
        capacity: r.get(2),
        current_load: r.get(3),
        available: r.get(4),
        downed: r.get(5),
        backoff: r.get(6),
    }
}

/// T10-070: the least loaded node with room, releasing capacity up to five times.
async fn allocate_node(tx: &Transaction<'_>, release_rate: f64) -> Result<(i64, String), LoginError> {
    for _ in 0..5 {
        let candidates: Vec<Node> = tx
            .query(
                &format!(
                    "SELECT {NODE_COLUMNS} FROM nodes
                     WHERE available > 0 AND capacity > current_load AND NOT downed AND NOT backoff"
                ),
                &[],
            )
            .await?
            .iter()
            .map(node_from_row)
            .collect();
        if let Some(best) = candidates.iter().min_by(|a, b| node_score(a).total_cmp(&node_score(b))) {
            tx.execute(
                "UPDATE nodes SET current_load = current_load + 1, available = GREATEST(available - 1, 0) WHERE id = $1",
                &[&best.id],
            )
            .await?;
            return Ok((best.id, best.url.clone()));
        }
        let released = tx
            .execute(
                "UPDATE nodes SET available = LEAST(GREATEST(CAST(capacity * $1::FLOAT8 AS BIGINT), 1), capacity - current_load)
                 WHERE available <= 0 AND capacity > current_load AND NOT downed",
                &[&release_rate],
            )
            .await?;
        if released == 0 {
            break;
        }
    }
    Err(LoginError::NoNode)
}

async fn insert_row(
    tx: &Transaction<'_>,
    email: &str,
    generation: i64,
    client_state: &str,
    keys_changed_at: Option<i64>,
    created_at: i64,
    node: (i64, String),
) -> Result<Row, LoginError> {
    let uid: i64 = tx
        .query_one(
            "INSERT INTO users (email, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at)
             VALUES ($1, $2, $3, $4, NULL, $5, $6) RETURNING uid",
            &[
                &email,
                &generation,
                &client_state,
                &created_at,
                &node.0,
                &keys_changed_at,
            ],
        )
        .await?
        .get(0);
    Ok(Row {
        uid,
        generation,
        client_state: client_state.to_string(),
        created_at,
        replaced_at: None,
        nodeid: node.0,
        keys_changed_at,
        node: Some(node.1),
    })
}

async fn may_sign_up(tx: &Transaction<'_>, login: &Login, policy: &NewUserPolicy) -> Result<(), LoginError> {
    if !policy.open {
        return Err(LoginError::NewUsersDisabled);
    }
    if policy.allow_list_only {
        let listed = tx
            .query_opt("SELECT 1 FROM allowed_accounts WHERE fxa_uid = $1", &[&login.fxa_uid])
            .await?;
        if listed.is_none() {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    if let Some(max) = policy.max_users {
        // Sign-ups take turns on this lock, so the limit holds under concurrency.
        tx.execute("SELECT pg_advisory_xact_lock($1, 1)", &[&LOCK_LOGIN])
            .await?;
        let n: i64 = tx
            .query_one(
                "SELECT COUNT(DISTINCT email)::BIGINT FROM users WHERE replaced_at IS NULL",
                &[],
            )
            .await?
            .get(0);
        if n as u64 >= max {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    Ok(())
}

/// The whole of tokenserver.md §5.1–5.3 for one request.
async fn login(tx: &Transaction<'_>, login: &Login, policy: &NewUserPolicy) -> Result<Assignment, LoginError> {
    // hashtext() spreads accounts over the lock space; a collision only serialises two
    // accounts' token requests.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_LOGIN, &login.email],
    )
    .await?;
    let now = now_ms();
    let rows: Vec<Row> = tx
        .query(
            "SELECT u.uid, u.generation, u.client_state, u.created_at, u.replaced_at, u.nodeid, u.keys_changed_at,
                    CASE WHEN NOT n.downed THEN n.node END
             FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
             WHERE u.email = $1 ORDER BY u.created_at DESC, u.uid DESC LIMIT $2",
            &[&login.email, &RECENT_RECORDS],
        )
        .await?
        .iter()
        .map(|r| Row {
            uid: r.get(0),
            generation: r.get(1),
            client_state: r.get(2),
            created_at: r.get(3),
            replaced_at: r.get(4),
            nodeid: r.get(5),
            keys_changed_at: r.get(6),
            node: r.get(7),
        })
        .collect();
    let claims = &login.claims;

    // T10-040: a first record from the request's own values.
    if rows.is_empty() {
        may_sign_up(tx, login, policy).await?;
        let node = allocate_node(tx, policy.release_rate).await?;
        let generation = claims.generation.unwrap_or(0);
        let row = insert_row(
            tx,
            &login.email,
            generation,
            &claims.client_state,
            claims.keys_changed_at,
            now,
            node,
        )
        .await?;
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
            tx.execute(
                "UPDATE users SET replaced_at = $1 WHERE uid = $2",
                &[&current.created_at, &row.uid],
            )
            .await?;
        }
    }

    // T10-042/043: a replaced record, or one whose node is gone or down, moves to a new node.
    let retired = current.generation == MAX_GENERATION;
    if current.node.is_none() && retired {
        return Err(LoginError::RetiredWithoutNode);
    }
    if (current.replaced_at.is_some() || current.node.is_none()) && !retired {
        if current.replaced_at.is_none() {
            tx.execute(
                "UPDATE users SET replaced_at = $1 WHERE uid = $2",
                &[&now, &current.uid],
            )
            .await?;
        }
        let node = allocate_node(tx, policy.release_rate).await?;
        let created = now.max(current.created_at + 1);
        current = insert_row(
            tx,
            &login.email,
            current.generation,
            &current.client_state,
            current.keys_changed_at,
            created,
            node,
        )
        .await?;
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
        )
        .await?;
        tx.execute(
            "UPDATE users SET replaced_at = $1 WHERE email = $2 AND replaced_at IS NULL AND created_at < $1",
            &[&created, &login.email],
        )
        .await?;
        return Ok(row.assignment());
    }
    if generation != current.generation || keys_changed_at != current.keys_changed_at {
        // T10-062: in place, never decreasing.
        tx.execute(
            "UPDATE users SET generation = $1, keys_changed_at = $2
             WHERE uid = $3 AND generation <= $1
               AND COALESCE(keys_changed_at, 0) <= COALESCE($2, keys_changed_at, 0) AND replaced_at IS NULL",
            &[&generation, &keys_changed_at, &current.uid],
        )
        .await?;
        current.generation = generation;
        current.keys_changed_at = keys_changed_at;
    }
    Ok(current.assignment())
}

#[async_trait]
impl TokenStore for PgStore {
    async fn login(&self, request: Login, policy: NewUserPolicy) -> Result<Assignment, LoginError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // A refusal still commits the bookkeeping of T10-041/042, as the spec asks.
        let outcome = login(&tx, &request, &policy).await;
        match &outcome {
            Err(LoginError::Store(_)) => return outcome,
            _ => tx.commit().await?,
        }
        outcome
    }

    async fn nodes(&self) -> StoreResult<Vec<Node>> {
        let c = self.client().await?;
        let rows = c
            .query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"), &[])
            .await?;
        Ok(rows.iter().map(node_from_row).collect())
    }

    async fn add_node(&self, url: &str, capacity: i64, if_absent: bool) -> StoreResult<bool> {
        let url = url.trim_end_matches('/');
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO nodes (node, available, capacity) VALUES ($1, $2, $2) ON CONFLICT (node) DO NOTHING",
                &[&url, &capacity],
            )
            .await?;
        let _ = if_absent; // Either way an existing node is left as it is.
        Ok(n > 0)
    }

    async fn update_node(&self, url: &str, update: NodeUpdate) -> StoreResult<bool> {
        let url = url.trim_end_matches('/');
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE nodes SET capacity = COALESCE($2, capacity), available = COALESCE($3, available),
                        downed = COALESCE($4, downed), backoff = COALESCE($5, backoff)
                 WHERE node = $1",
                &[
                    &url,
                    &update.capacity,
                    &update.available,
                    &update.downed,
                    &update.backoff,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn rename_node(&self, from: &str, to: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE nodes SET node = $2 WHERE node = $1",
                &[&from.trim_end_matches('/'), &to.trim_end_matches('/')],
            )
            .await?;
        Ok(n > 0)
    }

    async fn remove_node(&self, url: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(
            c.execute("DELETE FROM nodes WHERE node = $1", &[&url.trim_end_matches('/')])
                .await?
                > 0,
        )
    }

    async fn allow_account(&self, fxa_uid: &str, allow: bool) -> StoreResult<bool> {
        let c = self.client().await?;
        let n = if allow {
            c.execute(
                "INSERT INTO allowed_accounts (fxa_uid, added_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&fxa_uid, &now_ms()],
            )
            .await?
        } else {
            c.execute("DELETE FROM allowed_accounts WHERE fxa_uid = $1", &[&fxa_uid])
                .await?
        };
        Ok(n > 0)
    }

    async fn allowed_accounts(&self) -> StoreResult<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT fxa_uid FROM allowed_accounts ORDER BY added_at", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn token_users(&self) -> StoreResult<Vec<(String, i64, String)>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT u.email, u.uid, COALESCE(n.node, '') FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
                 WHERE u.replaced_at IS NULL ORDER BY u.uid",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    async fn purge_replaced(&self, node: &str, before_ms: i64) -> StoreResult<u64> {
        let node = node.trim_end_matches('/');
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let uids: Vec<i64> = tx
            .query(
                "SELECT u.uid FROM users u JOIN nodes n ON n.id = u.nodeid
                 WHERE n.node = $1 AND u.replaced_at IS NOT NULL AND u.replaced_at < $2 AND NOT u.data_purged
                 LIMIT 100",
                &[&node, &before_ms],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for uid in &uids {
            super::lock_bucket(&tx, *uid).await?;
            delete_bucket(&tx, *uid).await?;
            tx.execute("UPDATE users SET data_purged = TRUE WHERE uid = $1", &[uid])
                .await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(uids.len() as u64)
    }
}
