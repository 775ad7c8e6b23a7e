-- A pending batch keeps its own totals, so that an append or a commit reads one row
-- instead of counting the staged records (a cost that grew with the batch, paid on every
-- append). Records and bytes are counted as sent: an id sent twice counts twice, which
-- only errs on the safe side of the limits. `staged_seq` is the last sequence number
-- handed out; `staged_partial` counts records sent without a payload (their fields merge
-- one by one at the commit, so a batch with none commits in one statement).
ALTER TABLE batches ADD COLUMN staged_records BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN staged_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN staged_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN staged_partial BIGINT NOT NULL DEFAULT 0;
UPDATE batches SET
    staged_records = (SELECT COUNT(*) FROM batch_items WHERE batch_id = batches.id),
    staged_bytes = (SELECT COALESCE(SUM(payload_size), 0) FROM batch_items WHERE batch_id = batches.id),
    staged_seq = (SELECT COALESCE(MAX(seq), 0) FROM batch_items WHERE batch_id = batches.id),
    staged_partial = (SELECT COUNT(*) FROM batch_items WHERE batch_id = batches.id AND payload IS NULL)
WHERE expiry > 0;
