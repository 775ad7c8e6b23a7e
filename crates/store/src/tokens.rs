//! The token server's records — storage nodes and the users assigned to them — and the
//! rules of tokenserver.md §5, written once for every backend: each token request is one
//! write transaction that finds or creates the account's current record, checks the
//! request against it and updates it.

use async_trait::async_trait;
use syncstead_proto::tokenserver::{updated_values, validate, Claims, Rejection, StoredUser, MAX_GENERATION};

use crate::db::{now_ms, Db, Engine, Read};
use crate::sql::{query_one, Lock, Row as SqlRow, Tx};
use crate::storage::delete_bucket;
use crate::{StoreError, StoreResult, TokenStore};

/// A storage node that users can be assigned to (tokenserver.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i64,
    /// Origin (and path prefix) without a trailing slash, e.g. `https://sync-1.example.com`.
    pub url: String,
    pub capacity: i64,
    pub current_load: i64,
    pub available: i64,
    pub downed: bool,
    pub backoff: bool,
}

/// Changes to a node; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    pub capacity: Option<i64>,
    pub available: Option<i64>,
    pub downed: Option<bool>,
    pub backoff: Option<bool>,
}

/// The current record of an account after a successful token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub uid: i64,
    pub node: String,
    pub generation: i64,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
}

/// Who may get a first record (spec §5.1 and the self-hosting policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewUserPolicy {
    /// `allow_new_users`.
    pub open: bool,
    /// Only accounts on the allow list may sign up.
    pub allow_list_only: bool,
    /// At most this many accounts.
    pub max_users: Option<u64>,
    /// T10-070: share of a full node's capacity released per round.
    pub release_rate: f64,
}

/// A token request as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// `<fxa uid>@<fxa email domain>` (T10-025).
    pub email: String,
    pub fxa_uid: String,
    pub claims: Claims,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("new users are not allowed")]
    NewUsersDisabled,
    #[error("rejected: {0:?}")]
    Rejected(Rejection),
    /// No node can take the user (T10-070).
    #[error("no node is available")]
    NoNode,
    /// A retired account whose node is gone (T10-043).
    #[error("retired user without a node")]
    RetiredWithoutNode,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row of the token server's `users` table.
#[derive(Debug, Clone)]
struct UserRow {
    pub uid: i64,
    pub generation: i64,
    pub client_state: String,
    pub created_at: i64,
    pub replaced_at: Option<i64>,
    pub nodeid: i64,
    pub keys_changed_at: Option<i64>,
    /// `None` when the node was removed; downed nodes count as gone too.
    pub node: Option<String>,
}

impl UserRow {
    fn stored(&self) -> StoredUser {
        StoredUser {
            generation: self.generation,
            keys_changed_at: self.keys_changed_at,
            client_state: self.client_state.clone(),
        }
    }

    fn assignment(&self) -> Assignment {
        Assignment {
            uid: self.uid,
            node: self.node.clone().unwrap_or_default(),
            generation: self.generation,
            keys_changed_at: self.keys_changed_at,
            client_state: self.client_state.clone(),
        }
    }
}

/// T10-070: how full a node is; the lowest score gets the next user (an empty node first).
fn node_score(n: &Node) -> f64 {
    if n.current_load <= 0 {
        f64::NEG_INFINITY
    } else if n.capacity <= 1 {
        f64::INFINITY
    } else {
        (n.current_load as f64).ln() / (n.capacity as f64).ln()
    }
}

/// How many of an account's most recent records are considered (T10-030).
const RECENT_RECORDS: i64 = 20;

const NODE_COLUMNS: &str = "id, node, capacity, current_load, available, downed, backoff";

fn node_from_row(mut r: SqlRow) -> StoreResult<Node> {
    Ok(Node {
        id: r.int(0)?,
        url: r.text(1)?,
        capacity: r.int(2)?,
        current_load: r.int(3)?,
        available: r.int(4)?,
        downed: r.bool(5)?,
        backoff: r.bool(6)?,
    })
}

/// T10-070: the least loaded node with room, releasing capacity up to five times.
async fn allocate_node<T: Tx>(tx: &T, release_rate: f64) -> Result<(i64, String), LoginError> {
    for _ in 0..5 {
        let candidates = tx
            .query(
                &format!(
                    "SELECT {NODE_COLUMNS} FROM nodes
                     WHERE available > 0 AND capacity > current_load AND NOT downed AND NOT backoff"
                ),
                &[],
            )
            .await?
            .into_iter()
            .map(node_from_row)
            .collect::<StoreResult<Vec<Node>>>()?;
        if let Some(best) = candidates.iter().min_by(|a, b| node_score(a).total_cmp(&node_score(b))) {
            tx.execute(
                "UPDATE nodes SET current_load = current_load + 1,
                        available = CASE WHEN available > 1 THEN available - 1 ELSE 0 END
                 WHERE id = $1",
                &[best.id.into()],
            )
            .await?;
            return Ok((best.id, best.url.clone()));
        }
        // A full node gets back a share of its capacity, at least one place and at most
        // what is left.
        let released = tx
            .execute(
                "UPDATE nodes SET available = CASE
                     WHEN CAST(capacity * CAST($1 AS DOUBLE PRECISION) AS BIGINT) < 1 THEN 1
                     WHEN CAST(capacity * CAST($1 AS DOUBLE PRECISION) AS BIGINT) < capacity - current_load
                       THEN CAST(capacity * CAST($1 AS DOUBLE PRECISION) AS BIGINT)
                     ELSE capacity - current_load END
                 WHERE available <= 0 AND capacity > current_load AND NOT downed",
                &[release_rate.into()],
            )
            .await?;
        if released == 0 {
            break;
        }
    }
    Err(LoginError::NoNode)
}

async fn insert_row<T: Tx>(
    tx: &T,
    email: &str,
    generation: i64,
    client_state: &str,
    keys_changed_at: Option<i64>,
    created_at: i64,
    node: (i64, String),
) -> Result<UserRow, LoginError> {
    let uid = query_one(
        tx,
        "INSERT INTO users (email, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at)
         VALUES ($1, $2, $3, $4, NULL, $5, $6) RETURNING uid",
        &[
            email.into(),
            generation.into(),
            client_state.into(),
            created_at.into(),
            node.0.into(),
            keys_changed_at.into(),
        ],
    )
    .await?
    .int(0)?;
    Ok(UserRow {
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

async fn may_sign_up<T: Tx>(tx: &T, login: &Login, policy: &NewUserPolicy) -> Result<(), LoginError> {
    if !policy.open {
        return Err(LoginError::NewUsersDisabled);
    }
    if policy.allow_list_only {
        let listed = tx
            .query_opt(
                "SELECT 1 FROM allowed_accounts WHERE fxa_uid = $1",
                &[(&login.fxa_uid).into()],
            )
            .await?;
        if listed.is_none() {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    if let Some(max) = policy.max_users {
        // Sign-ups take turns, so the limit holds under concurrency.
        tx.lock(Lock::SignUps).await?;
        let n = query_one(
            tx,
            "SELECT CAST(COUNT(DISTINCT email) AS BIGINT) FROM users WHERE replaced_at IS NULL",
            &[],
        )
        .await?
        .count(0)?;
        if n >= max {
            return Err(LoginError::NewUsersDisabled);
        }
    }
    Ok(())
}

async fn mark_replaced<T: Tx>(tx: &T, uid: i64, at: i64) -> StoreResult<()> {
    tx.execute(
        "UPDATE users SET replaced_at = $1 WHERE uid = $2",
        &[at.into(), uid.into()],
    )
    .await?;
    Ok(())
}

/// The whole of tokenserver.md §5.1–5.3 for one request.
async fn login<T: Tx>(tx: &T, login: &Login, policy: &NewUserPolicy) -> Result<Assignment, LoginError> {
    // Two requests of one account never race to create records.
    tx.lock(Lock::Login(&login.email)).await?;
    let now = now_ms();
    let rows = tx
        .query(
            "SELECT u.uid, u.generation, u.client_state, u.created_at, u.replaced_at, u.nodeid, u.keys_changed_at,
                    CASE WHEN NOT n.downed THEN n.node END
             FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
             WHERE u.email = $1 ORDER BY u.created_at DESC, u.uid DESC LIMIT $2",
            &[(&login.email).into(), RECENT_RECORDS.into()],
        )
        .await?
        .into_iter()
        .map(|mut r| {
            Ok(UserRow {
                uid: r.int(0)?,
                generation: r.int(1)?,
                client_state: r.text(2)?,
                created_at: r.int(3)?,
                replaced_at: r.opt_int(4)?,
                nodeid: r.int(5)?,
                keys_changed_at: r.opt_int(6)?,
                node: r.opt_text(7)?,
            })
        })
        .collect::<StoreResult<Vec<UserRow>>>()?;
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
    let Some(current_index) = rows
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| (r.generation, r.created_at))
        .map(|(i, _)| i)
    else {
        return Err(StoreError::Internal("no current record".into()).into());
    };
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
            mark_replaced(tx, row.uid, current.created_at).await?;
        }
    }

    // T10-042/043: a replaced record, or one whose node is gone or down, moves to a new node.
    let retired = current.generation == MAX_GENERATION;
    if current.node.is_none() && retired {
        return Err(LoginError::RetiredWithoutNode);
    }
    if (current.replaced_at.is_some() || current.node.is_none()) && !retired {
        if current.replaced_at.is_none() {
            mark_replaced(tx, current.uid, now).await?;
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
            &[created.into(), (&login.email).into()],
        )
        .await?;
        return Ok(row.assignment());
    }
    if generation != current.generation || keys_changed_at != current.keys_changed_at {
        // T10-062: in place, never decreasing.
        tx.execute(
            "UPDATE users SET generation = $1, keys_changed_at = $2
             WHERE uid = $3 AND generation <= $1
               AND COALESCE(keys_changed_at, 0) <= COALESCE(CAST($2 AS BIGINT), keys_changed_at, 0)
               AND replaced_at IS NULL",
            &[generation.into(), keys_changed_at.into(), current.uid.into()],
        )
        .await?;
        current.generation = generation;
        current.keys_changed_at = keys_changed_at;
    }
    Ok(current.assignment())
}

fn node_url(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

#[async_trait]
impl<E: Engine> TokenStore for Db<E> {
    async fn login(&self, request: Login, policy: NewUserPolicy) -> Result<Assignment, LoginError> {
        let request = std::sync::Arc::new(request);
        // A refusal travels inside Ok, so that it still commits the bookkeeping of
        // T10-041/042, as the spec asks.
        self.write("login", 0, move |tx| {
            let request = request.clone();
            Box::pin(async move {
                match login(tx, &request, &policy).await {
                    Err(LoginError::Store(e)) => Err(e),
                    outcome => Ok(outcome),
                }
            })
        })
        .await?
    }

    async fn nodes(&self) -> StoreResult<Vec<Node>> {
        self.read("nodes", Read::Statement, |tx| {
            Box::pin(async move {
                tx.query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"), &[])
                    .await?
                    .into_iter()
                    .map(node_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn add_node(&self, url: &str, capacity: i64) -> StoreResult<bool> {
        let url = node_url(url);
        self.write("add_node", 0, move |tx| {
            let url = url.clone();
            Box::pin(async move {
                let n = tx
                    .execute(
                        "INSERT INTO nodes (node, available, capacity) VALUES ($1, $2, $2) ON CONFLICT (node) DO NOTHING",
                        &[(&url).into(), capacity.into()],
                    )
                    .await?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn update_node(&self, url: &str, update: NodeUpdate) -> StoreResult<bool> {
        let url = node_url(url);
        self.write("update_node", 0, move |tx| {
            let (url, u) = (url.clone(), update.clone());
            Box::pin(async move {
                let n = tx
                    .execute(
                        "UPDATE nodes SET capacity = COALESCE($2, capacity), available = COALESCE($3, available),
                                downed = COALESCE($4, downed), backoff = COALESCE($5, backoff)
                         WHERE node = $1",
                        &[
                            (&url).into(),
                            u.capacity.into(),
                            u.available.into(),
                            u.downed.into(),
                            u.backoff.into(),
                        ],
                    )
                    .await?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn rename_node(&self, from: &str, to: &str) -> StoreResult<bool> {
        let (from, to) = (node_url(from), node_url(to));
        self.write("rename_node", 0, move |tx| {
            let (from, to) = (from.clone(), to.clone());
            Box::pin(async move {
                let n = tx
                    .execute(
                        "UPDATE nodes SET node = $2 WHERE node = $1",
                        &[(&from).into(), (&to).into()],
                    )
                    .await?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn remove_node(&self, url: &str) -> StoreResult<bool> {
        let url = node_url(url);
        self.write("remove_node", 0, move |tx| {
            let url = url.clone();
            Box::pin(async move {
                Ok(tx
                    .execute("DELETE FROM nodes WHERE node = $1", &[(&url).into()])
                    .await?
                    > 0)
            })
        })
        .await
    }

    async fn allow_account(&self, fxa_uid: &str, allow: bool) -> StoreResult<bool> {
        let fxa_uid = fxa_uid.to_string();
        self.write("allow_account", 0, move |tx| {
            let fxa_uid = fxa_uid.clone();
            Box::pin(async move {
                let n = if allow {
                    tx.execute(
                        "INSERT INTO allowed_accounts (fxa_uid, added_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[(&fxa_uid).into(), now_ms().into()],
                    )
                    .await?
                } else {
                    tx.execute("DELETE FROM allowed_accounts WHERE fxa_uid = $1", &[(&fxa_uid).into()])
                        .await?
                };
                Ok(n > 0)
            })
        })
        .await
    }

    async fn allowed_accounts(&self) -> StoreResult<Vec<String>> {
        self.read("allowed_accounts", Read::Statement, |tx| {
            Box::pin(async move {
                tx.query("SELECT fxa_uid FROM allowed_accounts ORDER BY added_at", &[])
                    .await?
                    .into_iter()
                    .map(|mut r| r.text(0))
                    .collect()
            })
        })
        .await
    }

    async fn token_users(&self) -> StoreResult<Vec<(String, i64, String)>> {
        self.read("token_users", Read::Statement, |tx| {
            Box::pin(async move {
                tx.query(
                    "SELECT u.email, u.uid, COALESCE(n.node, '') FROM users u LEFT JOIN nodes n ON n.id = u.nodeid
                     WHERE u.replaced_at IS NULL ORDER BY u.uid",
                    &[],
                )
                .await?
                .into_iter()
                .map(|mut r| Ok((r.text(0)?, r.int(1)?, r.text(2)?)))
                .collect()
            })
        })
        .await
    }

    async fn purge_replaced(&self, node: &str, before_ms: i64) -> StoreResult<u64> {
        let node = node_url(node);
        self.write("purge_replaced", crate::db::HEAVY, move |tx| {
            let node = node.clone();
            Box::pin(async move {
                let uids = tx
                    .query(
                        "SELECT u.uid FROM users u JOIN nodes n ON n.id = u.nodeid
                         WHERE n.node = $1 AND u.replaced_at IS NOT NULL AND u.replaced_at < $2 AND NOT u.data_purged
                         LIMIT 100",
                        &[(&node).into(), before_ms.into()],
                    )
                    .await?
                    .iter()
                    .map(|r| r.int(0))
                    .collect::<StoreResult<Vec<i64>>>()?;
                for uid in &uids {
                    delete_bucket(tx, *uid).await?;
                    tx.execute("UPDATE users SET data_purged = TRUE WHERE uid = $1", &[(*uid).into()])
                        .await?;
                }
                Ok(uids.len() as u64)
            })
        })
        .await
    }
}
