-- Weave 1.1 accounts (user-api-1.0.md). An account's storage bucket is -id, so it can
-- never collide with a Sync 1.5 uid (those are never negative).

CREATE TABLE accounts (
    id              BIGSERIAL PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    email           TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    reset_code_hash TEXT,
    reset_expires   BIGINT
);
