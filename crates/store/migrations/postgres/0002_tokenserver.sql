-- Token Server 1.0: storage nodes and the users assigned to them (tokenserver.md §4).

CREATE TABLE nodes (
    id           BIGSERIAL PRIMARY KEY,
    node         TEXT NOT NULL UNIQUE,
    available    BIGINT NOT NULL,
    current_load BIGINT NOT NULL DEFAULT 0,
    capacity     BIGINT NOT NULL,
    downed       BOOLEAN NOT NULL DEFAULT FALSE,
    backoff      BOOLEAN NOT NULL DEFAULT FALSE
);

-- One row per client-state epoch of an account; uid names the storage bucket and is
-- never reused.
CREATE TABLE users (
    uid             BIGSERIAL PRIMARY KEY,
    email           TEXT NOT NULL,
    generation      BIGINT NOT NULL,
    client_state    TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    replaced_at     BIGINT,
    nodeid          BIGINT NOT NULL,
    keys_changed_at BIGINT,
    data_purged     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX users_by_email ON users (email, created_at);
CREATE INDEX users_replaced ON users (replaced_at);
CREATE INDEX users_by_node ON users (nodeid);

CREATE TABLE allowed_accounts (
    fxa_uid  TEXT PRIMARY KEY,
    added_at BIGINT NOT NULL
);
