-- Custom collection names are released when no bucket uses them (a user who makes and
-- deletes names must not grow the registry for ever). Ids come from a sequence, so none
-- is handed out twice; the foreign keys make a write that holds an id released under it
-- fail (and be retried with a fresh one), and make a release that races a new use fail
-- instead of leaving records under a dead id.
ALTER TABLE user_collections
    ADD CONSTRAINT user_collections_collection FOREIGN KEY (collection_id) REFERENCES collections (id);
CREATE INDEX user_collections_by_collection ON user_collections (collection_id);
ALTER TABLE batches
    ADD CONSTRAINT batches_collection FOREIGN KEY (collection_id) REFERENCES collections (id);
CREATE INDEX batches_by_collection ON batches (collection_id);
