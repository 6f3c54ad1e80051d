-- replicate schema version 7: apply_begin no longer looks for repeated request ids.
--
-- Version 6 dropped plan_cache_mode = force_custom_plan (sql/007_apply_bookkeeping.sql), so
-- apply_begin's lookup `request_id = ANY (p_request_ids)` kept the generic plan made on its
-- first call, when replicate.requests was empty and never analysed: a sequential scan. On a
-- fresh cluster every batch then read the whole table, until autovacuum's first ANALYZE of it
-- made PL/pgSQL plan again: 9-21 ms per batch after 30 s of writes at 32 clients, and half the
-- throughput for the first minute (docs/decisions.md, "A plan made on an empty table").
--
-- The lookup is not needed: apply_finish inserts the batch's request ids into
-- replicate.requests, whose primary key refuses one applied before (unique_violation, class
-- 23). The applier takes that, like RP002, as "roll back and apply this batch entry by entry"
-- (runtime/applier.py), and its careful path finds the repeats itself. The statements of a
-- batch that repeats a request now run before the batch is rolled back, instead of not at
-- all; only a client's retry of a request applied before does that. p_request_ids stays, so
-- that proxies of version 6 call the same function.
CREATE OR REPLACE FUNCTION replicate.apply_begin(p_first bigint, p_request_ids text[],
                                                 p_apply_timeout_ms integer)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_applied bigint;
BEGIN
    SELECT a.slot INTO v_applied FROM replicate.applied a FOR UPDATE;
    v_applied := coalesce(v_applied, 0);
    IF p_first IS DISTINCT FROM v_applied + 1 THEN
        RAISE EXCEPTION 'slot % is not next: the node has applied up to %', p_first, v_applied
              USING ERRCODE = 'RP001', DETAIL = v_applied::text;
    END IF;
    -- nextval() is not transactional: put every sequence back to its state at the applied
    -- slot (sql/003_sequences.sql).
    PERFORM setval(to_regclass(s.sequence_name), s.last_value, s.is_called)
       FROM replicate.sequence_state s
      WHERE to_regclass(s.sequence_name) IS NOT NULL;
    -- The guard trigger lets the batch through; the durable log replays what a crash loses;
    -- a lock held on this node past the apply timeout stalls it (a local cause), and a
    -- statement may run longer than that before it counts as stuck.
    PERFORM set_config('replicate.applying', 'on', true),
            set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', p_apply_timeout_ms::text, true),
            set_config('statement_timeout', (4 * p_apply_timeout_ms)::text, true);
END
$fn$;
