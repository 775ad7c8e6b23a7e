-- Token Server 1.0: storage nodes and the users assigned to them (tokenserver.md §4).

CREATE TABLE nodes (
    id           INTEGER PRIMARY KEY,
    node         TEXT NOT NULL UNIQUE,
    available    INTEGER NOT NULL,
    current_load INTEGER NOT NULL DEFAULT 0,
    capacity     INTEGER NOT NULL,
    downed       INTEGER NOT NULL DEFAULT 0,
    backoff      INTEGER NOT NULL DEFAULT 0
);

-- One row per client-state epoch of an account; uid names the storage bucket and is
-- never reused.
CREATE TABLE users (
    uid             INTEGER PRIMARY KEY AUTOINCREMENT,
    email           TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    client_state    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    replaced_at     INTEGER,
    nodeid          INTEGER NOT NULL,
    keys_changed_at INTEGER,
    -- Set once the storage of a replaced record has been deleted from this node.
    data_purged     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX users_by_email ON users (email, created_at);
CREATE INDEX users_replaced ON users (replaced_at);
CREATE INDEX users_by_node ON users (nodeid);

-- Accounts (FxA uids) an operator allowed explicitly, for allow-list sign-up.
CREATE TABLE allowed_accounts (
    fxa_uid  TEXT PRIMARY KEY,
    added_at INTEGER NOT NULL
);
