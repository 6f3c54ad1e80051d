-- replicate schema version 10: the applied request ids are an index of replicate.outcomes, not a table of their own.
--
-- Every applied write recorded its request id twice on every node: in its outcome row, and in
-- replicate.requests (request_id PRIMARY KEY, slot), whose rows are exactly the outcome rows
-- with a request id and a status other than 'duplicate' (apply_finish inserted both from the
-- same arrays, with that filter). A unique partial index on replicate.outcomes over those rows
-- keeps what the table gave: a request applied before fails the batch's outcome INSERT with a
-- unique violation (class 23: the applier rolls back and takes its careful path, which finds
-- the repeats itself), and a lookup by request id reads an index. One heap row, one statement
-- per batch and their WAL less per write on every node (docs/decisions.md, "Request ids in the
-- outcomes"). replicate.requests stays as a view of the same rows, for readers of version 9
-- and before (proxies during a rolling upgrade, `replicate` tools, the tests).

CREATE UNIQUE INDEX IF NOT EXISTS outcomes_request ON replicate.outcomes (request_id)
 WHERE request_id <> '' AND status <> 'duplicate';

DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'replicate' AND c.relname = 'requests' AND c.relkind = 'r')
    THEN
        DROP TABLE replicate.requests;
    END IF;
END
$do$;

CREATE OR REPLACE VIEW replicate.requests AS
SELECT o.request_id, o.slot FROM replicate.outcomes o
 WHERE o.request_id <> '' AND o.status <> 'duplicate';

-- Records the batch's outcomes (and so its request ids), the new state of the tracked
-- sequences that moved, and the new applied slot, in the transaction that applied the batch.
CREATE OR REPLACE FUNCTION replicate.apply_finish(
    p_last bigint, p_slots bigint[], p_request_ids text[], p_statuses text[],
    p_command_tags text[], p_rows bigint[], p_sqlstates text[], p_messages text[],
    p_details text[], p_hints text[], p_results bytea[])
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO replicate.outcomes (slot, request_id, status, command_tag, rows_affected,
                                    sqlstate, message, detail, hint, result)
    SELECT * FROM unnest(p_slots, p_request_ids, p_statuses, p_command_tags, p_rows,
                         p_sqlstates, p_messages, p_details, p_hints, p_results);
    IF EXISTS (SELECT FROM replicate.sequence_state) THEN
        UPDATE replicate.sequence_state s
           SET last_value = v.last_value, is_called = v.is_called
          FROM (SELECT t.sequence_name,
                       coalesce(pg_sequence_last_value(t.oid), q.seqstart) AS last_value,
                       pg_sequence_last_value(t.oid) IS NOT NULL AS is_called
                  FROM (SELECT x.sequence_name, to_regclass(x.sequence_name) AS oid
                          FROM replicate.sequence_state x) t
                  JOIN pg_sequence q ON q.seqrelid = t.oid) v
         WHERE s.sequence_name = v.sequence_name
           AND (s.last_value, s.is_called) IS DISTINCT FROM (v.last_value, v.is_called);
    END IF;
    UPDATE replicate.applied SET slot = p_last;
END
$fn$;
