-- Hawk nonces seen, each kept until its token can no longer be used (T10-118). SQLite is
-- served by one process (the instance lock), which keeps them in memory; the table is here
-- so both schemas stay table for table alike.
CREATE TABLE hawk_nonces (
    id INTEGER PRIMARY KEY,
    expiry INTEGER NOT NULL
);
CREATE INDEX hawk_nonces_expiry ON hawk_nonces (expiry);
