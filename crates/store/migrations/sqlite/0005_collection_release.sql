-- Custom collection names are released when no bucket uses them (a user who makes and
-- deletes names must not grow the registry for ever). Two things make that safe:
-- ids are never handed out twice (AUTOINCREMENT keeps the high-water mark), and every
-- row that uses an id references it, so a write holding an id released under it fails
-- and is retried with a fresh one instead of filing records under a dead or reused id.

ALTER TABLE collections RENAME TO collections_before_0005;
CREATE TABLE collections (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO collections (id, name) SELECT id, name FROM collections_before_0005;
DROP TABLE collections_before_0005;
-- Custom names are numbered from 101 (S15-060).
UPDATE sqlite_sequence SET seq = MAX(seq, 100) WHERE name = 'collections';

CREATE TABLE user_collections_0005 (
    user_id       INTEGER NOT NULL,
    collection_id INTEGER NOT NULL REFERENCES collections (id),
    modified      INTEGER NOT NULL,
    PRIMARY KEY (user_id, collection_id)
) WITHOUT ROWID;
INSERT INTO user_collections_0005 SELECT user_id, collection_id, modified FROM user_collections;
DROP TABLE user_collections;
ALTER TABLE user_collections_0005 RENAME TO user_collections;
CREATE INDEX user_collections_by_collection ON user_collections (collection_id);

CREATE TABLE batches_0005 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL,
    collection_id INTEGER NOT NULL REFERENCES collections (id),
    expiry        INTEGER NOT NULL
);
INSERT INTO batches_0005 SELECT id, user_id, collection_id, expiry FROM batches;
-- Batch ids are not reused either: keep the old table's high-water mark.
DELETE FROM sqlite_sequence WHERE name = 'batches_0005';
INSERT INTO sqlite_sequence (name, seq) SELECT 'batches_0005', MAX(
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0),
    COALESCE((SELECT MAX(id) FROM batches_0005), 0));
DROP TABLE batches;
ALTER TABLE batches_0005 RENAME TO batches;
CREATE INDEX batches_by_user ON batches (user_id);
CREATE INDEX batches_by_expiry ON batches (expiry);
CREATE INDEX batches_by_collection ON batches (collection_id);
