-- Syncstead's own accounts (docs/accounts.md), the ones Firefox signs in to here: each
-- account's onepw credentials and wrapped keys, its tokens, OAuth codes and devices.
-- Secrets are kept only as what the protocol lets the server keep: verifyHash, not the
-- password; wrapWrapKb, not kB; hashes of refresh tokens and codes, not the values.

CREATE TABLE identities (
    uid             TEXT PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    auth_salt       TEXT NOT NULL,
    verify_hash     TEXT NOT NULL,
    wrap_wrap_kb    TEXT NOT NULL,
    ka              TEXT NOT NULL,
    keys_changed_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE
);

-- Session and key-fetch tokens by their derived id, refresh tokens by their SHA-256.
CREATE TABLE identity_tokens (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    uid        TEXT NOT NULL,
    data       TEXT NOT NULL,
    client_id  TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX identity_tokens_uid ON identity_tokens (uid);

CREATE TABLE identity_codes (
    code_hash      TEXT PRIMARY KEY,
    uid            TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    scope          TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    keys_jwe       TEXT,
    expires_at     BIGINT NOT NULL
);

CREATE TABLE identity_devices (
    id              TEXT PRIMARY KEY,
    uid             TEXT NOT NULL,
    token_id        TEXT,
    name            TEXT NOT NULL,
    device_type     TEXT NOT NULL,
    push_callback   TEXT,
    push_public_key TEXT,
    push_auth_key   TEXT,
    commands        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_access     BIGINT NOT NULL
);
CREATE INDEX identity_devices_uid ON identity_devices (uid);
