//! The token server's records: storage nodes and the users assigned to them.

use syncstead_proto::tokenserver::{Claims, Rejection, StoredUser};

use crate::StoreError;

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

impl From<rusqlite::Error> for LoginError {
    fn from(e: rusqlite::Error) -> Self {
        LoginError::Store(e.into())
    }
}

/// One row of the token server's `users` table, as both backends read it.
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
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
    pub fn stored(&self) -> StoredUser {
        StoredUser {
            generation: self.generation,
            keys_changed_at: self.keys_changed_at,
            client_state: self.client_state.clone(),
        }
    }

    pub fn assignment(&self) -> Assignment {
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
pub(crate) fn node_score(n: &Node) -> f64 {
    if n.current_load <= 0 {
        f64::NEG_INFINITY
    } else if n.capacity <= 1 {
        f64::INFINITY
    } else {
        (n.current_load as f64).ln() / (n.capacity as f64).ln()
    }
}
