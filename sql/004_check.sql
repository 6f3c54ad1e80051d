-- replicate schema version 3: consistency checks computed inside the log.
--
-- A check is a control entry. Every node computes, in the apply transaction of that slot, a
-- count and an order-independent hash of each checked table per bucket of primary-key hashes,
-- so all nodes hash exactly the same logical state without stopping writes. A second check
-- limited to the buckets that differed records one hash per row, to name the rows.
CREATE TABLE IF NOT EXISTS replicate.check_results (
    check_id text NOT NULL,
    slot bigint NOT NULL,
    table_name text NOT NULL,
    bucket integer NOT NULL,
    row_count bigint NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (check_id, table_name, bucket)
);

CREATE TABLE IF NOT EXISTS replicate.check_rows (
    check_id text NOT NULL,
    table_name text NOT NULL,
    row_key text NOT NULL,
    row_hash text NOT NULL,
    PRIMARY KEY (check_id, table_name, row_key)
);
