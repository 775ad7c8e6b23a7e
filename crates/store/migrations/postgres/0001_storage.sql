-- Storage 1.5/1.1 buckets. Times are integer milliseconds (multiples of 10); an expiry
-- of 9223372036854775807 means never.

CREATE TABLE collections (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO collections (id, name) VALUES
    (1, 'clients'), (2, 'crypto'), (3, 'forms'), (4, 'history'), (5, 'keys'), (6, 'meta'),
    (7, 'bookmarks'), (8, 'prefs'), (9, 'tabs'), (10, 'passwords'), (11, 'addons'),
    (12, 'addresses'), (13, 'creditcards');
-- Custom collections are numbered from 101, as in SQLite.
CREATE SEQUENCE collections_custom_id START 101;

-- Storage-level last-modified of a bucket; absent means 0 (no data).
CREATE TABLE user_storage (
    user_id  BIGINT PRIMARY KEY,
    modified BIGINT NOT NULL
);

CREATE TABLE user_collections (
    user_id       BIGINT NOT NULL,
    collection_id INTEGER NOT NULL,
    modified      BIGINT NOT NULL,
    PRIMARY KEY (user_id, collection_id)
);

-- Ids compare byte-wise ("C"), as in SQLite, whatever the database's collation: paging
-- keys and the order of ties depend on it.
CREATE TABLE bsos (
    user_id       BIGINT NOT NULL,
    collection_id INTEGER NOT NULL,
    id            TEXT COLLATE "C" NOT NULL,
    sortindex     INTEGER,
    payload       TEXT NOT NULL,
    payload_size  BIGINT NOT NULL,
    modified      BIGINT NOT NULL,
    expiry        BIGINT NOT NULL,
    parentid      TEXT,
    predecessorid TEXT,
    PRIMARY KEY (user_id, collection_id, id)
);
CREATE INDEX bsos_by_modified ON bsos (user_id, collection_id, modified, id);
CREATE INDEX bsos_by_sortindex ON bsos (user_id, collection_id, sortindex, id);
CREATE INDEX bsos_expiring ON bsos (expiry) WHERE expiry < 9223372036854775800;

CREATE TABLE batches (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    collection_id INTEGER NOT NULL,
    expiry        BIGINT NOT NULL
);
CREATE INDEX batches_by_user ON batches (user_id);
CREATE INDEX batches_by_expiry ON batches (expiry);

CREATE TABLE batch_items (
    batch_id     BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    id           TEXT COLLATE "C" NOT NULL,
    sortindex    INTEGER,
    payload      TEXT,
    payload_size BIGINT NOT NULL DEFAULT 0,
    ttl          BIGINT,
    PRIMARY KEY (batch_id, id)
);
