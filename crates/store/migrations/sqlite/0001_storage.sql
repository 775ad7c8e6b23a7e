-- Storage 1.5/1.1 buckets. Times are integer milliseconds (multiples of 10).

CREATE TABLE collections (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO collections (id, name) VALUES
    (1, 'clients'), (2, 'crypto'), (3, 'forms'), (4, 'history'), (5, 'keys'), (6, 'meta'),
    (7, 'bookmarks'), (8, 'prefs'), (9, 'tabs'), (10, 'passwords'), (11, 'addons'),
    (12, 'addresses'), (13, 'creditcards');

-- Storage-level last-modified of a bucket; absent means 0 (no data).
CREATE TABLE user_storage (
    user_id  INTEGER PRIMARY KEY,
    modified INTEGER NOT NULL
);

CREATE TABLE user_collections (
    user_id       INTEGER NOT NULL,
    collection_id INTEGER NOT NULL,
    modified      INTEGER NOT NULL,
    PRIMARY KEY (user_id, collection_id)
) WITHOUT ROWID;

-- A rowid table: payloads of up to megabytes do not belong inside a clustered index.
CREATE TABLE bsos (
    user_id       INTEGER NOT NULL,
    collection_id INTEGER NOT NULL,
    id            TEXT NOT NULL,
    sortindex     INTEGER,
    payload       TEXT NOT NULL,
    payload_size  INTEGER NOT NULL,
    modified      INTEGER NOT NULL,
    expiry        INTEGER NOT NULL,
    parentid      TEXT,
    predecessorid TEXT
);
CREATE UNIQUE INDEX bsos_pk ON bsos (user_id, collection_id, id);
CREATE INDEX bsos_by_modified ON bsos (user_id, collection_id, modified, id);
CREATE INDEX bsos_by_sortindex ON bsos (user_id, collection_id, sortindex, id);
-- Only records with a ttl ever expire; the purge walks this small index.
CREATE INDEX bsos_expiring ON bsos (expiry) WHERE expiry < 9223372036854775800;

CREATE TABLE batches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL,
    collection_id INTEGER NOT NULL,
    expiry        INTEGER NOT NULL
);
CREATE INDEX batches_by_user ON batches (user_id);
CREATE INDEX batches_by_expiry ON batches (expiry);

CREATE TABLE batch_items (
    batch_id     INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    id           TEXT NOT NULL,
    sortindex    INTEGER,
    payload      TEXT,
    payload_size INTEGER NOT NULL DEFAULT 0,
    ttl          INTEGER,
    PRIMARY KEY (batch_id, id)
);
