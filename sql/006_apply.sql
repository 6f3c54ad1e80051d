-- replicate schema version 5: the applier's bookkeeping in two calls per batch.
--
-- The applier used to spend about twelve round trips to the node per batch on bookkeeping
-- (lock and check the applied slot, settings, sequence restore, request-id lookup, outcomes,
-- request ids, sequence save, applied slot). Every node applies every write, so those round
-- trips were most of a write's latency at one client. Now a batch is one pipeline:
--
--   BEGIN; SELECT replicate.apply_begin(...); <the batch's statements>   -- one round trip
--   SELECT replicate.apply_finish(...); COMMIT                           -- one round trip
--
-- apply_begin raises instead of answering, so that in a pipeline the batch's statements never
-- run on a node that is not ready for them: SQLSTATE RP001 "slot not next" (DETAIL: the
-- node's applied slot) and RP002 "request already applied" (the applier then takes its careful
-- path, which looks every request id up). Class RP is ours; no PostgreSQL error uses it.

CREATE OR REPLACE FUNCTION replicate.apply_begin(p_first bigint, p_request_ids text[],
                                                 p_apply_timeout_ms integer)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_applied bigint;
    v_request text;
BEGIN
    SELECT a.slot INTO v_applied FROM replicate.applied a FOR UPDATE;
    v_applied := coalesce(v_applied, 0);
    IF p_first IS DISTINCT FROM v_applied + 1 THEN
        RAISE EXCEPTION 'slot % is not next: the node has applied up to %', p_first, v_applied
              USING ERRCODE = 'RP001', DETAIL = v_applied::text;
    END IF;
    -- The guard trigger lets the batch through; the durable log replays what a crash loses;
    -- a lock held on this node past the apply timeout stalls it (a local cause), and a
    -- statement may run longer than that before it counts as stuck.
    -- The applier prepares each statement text once per connection; a generic cached plan
    -- would keep expressions folded under the settings of its first executions (e.g.
    -- '\x41'::bytea::text under another bytea_output), and a node with a fresh cache would
    -- compute differently: every execution is planned under the entry's own settings.
    PERFORM set_config('replicate.applying', 'on', true),
            set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', p_apply_timeout_ms::text, true),
            set_config('statement_timeout', (4 * p_apply_timeout_ms)::text, true),
            set_config('plan_cache_mode', 'force_custom_plan', true);
    -- nextval() is not transactional: put every sequence back to its state at the applied
    -- slot (sql/003_sequences.sql).
    PERFORM setval(to_regclass(s.sequence_name), s.last_value, s.is_called)
       FROM replicate.sequence_state s
      WHERE to_regclass(s.sequence_name) IS NOT NULL;
    SELECT r.request_id INTO v_request FROM replicate.requests r
     WHERE r.request_id = ANY (p_request_ids) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'request % was applied before', v_request USING ERRCODE = 'RP002';
    END IF;
END
$fn$;

-- Records the batch's outcomes and request ids, the sequences' new state and the new applied
-- slot, in the transaction that applied the batch.
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
    INSERT INTO replicate.requests (request_id, slot)
    SELECT u.request_id, min(u.slot) FROM unnest(p_request_ids, p_slots, p_statuses)
                                          AS u(request_id, slot, status)
     WHERE u.request_id <> '' AND u.status <> 'duplicate'
     GROUP BY u.request_id;
    DELETE FROM replicate.sequence_state;  -- only sequences of registered tables stay
    INSERT INTO replicate.sequence_state (sequence_name, last_value, is_called)
    SELECT DISTINCT quote_ident(s.schemaname) || '.' || quote_ident(s.sequencename),
           coalesce(s.last_value, s.start_value), s.last_value IS NOT NULL
      FROM replicate.registered_tables r
      JOIN pg_depend d ON d.refobjid = to_regclass(r.table_name)
                      AND d.refclassid = 'pg_class'::regclass
                      AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname;
    UPDATE replicate.applied SET slot = p_last;
END
$fn$;
