-- Hawk nonces seen by any of the server processes sharing this database, each kept until
-- its token can no longer be used (T10-118). Unlogged: no write-ahead log for a table that
-- only guards against replays (after a crash of PostgreSQL itself it starts empty).
CREATE UNLOGGED TABLE hawk_nonces (
    id BIGINT PRIMARY KEY,
    expiry BIGINT NOT NULL
);
CREATE INDEX hawk_nonces_expiry ON hawk_nonces (expiry);
