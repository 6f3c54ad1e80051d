-- replicate schema version 6: the apply bookkeeping plans once, and sequences are tracked, not searched.
--
-- Measured with track_functions on the three nodes of a local cluster, one client writing
-- (docs/decisions.md, "Apply bookkeeping"): apply_finish took ~0.40 ms and apply_begin ~0.17 ms
-- per batch, more than the batch's own statement. Two causes:
--
-- * apply_begin set plan_cache_mode = force_custom_plan, and it stayed set through
--   apply_finish: every statement of both functions (and of the batch) was planned again on
--   every call. It is no longer set: the applier keys each prepared statement by the entry's
--   role and settings (runtime/applier.py, _parse_context), so a cached plan, generic or not,
--   only ever runs under the settings it was made with.
-- * apply_finish searched the catalog (pg_depend, pg_class, pg_sequences) for the sequences of
--   registered tables on every batch, then deleted and re-inserted every row of
--   replicate.sequence_state. The set of those sequences changes only when a table is
--   registered or unregistered (DDL on a registered table is refused, README "Limits"), so
--   the applier now calls replicate.track_sequences() in the transaction of that control
--   entry, and apply_finish only updates the rows whose sequence moved.
--
-- Upgrading from version 5 keeps replicate.sequence_state as version 5 last wrote it: exactly
-- the sequences of the registered tables at the applied slot. It is not recomputed here from
-- the live sequences: nextval() is not transactional, so a live sequence may be ahead of the
-- state the applier restores.
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
    -- The guard trigger lets the batch through; the durable log replays what a crash loses;
    -- a lock held on this node past the apply timeout stalls it (a local cause), and a
    -- statement may run longer than that before it counts as stuck.
    PERFORM set_config('replicate.applying', 'on', true),
            set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', p_apply_timeout_ms::text, true),
            set_config('statement_timeout', (4 * p_apply_timeout_ms)::text, true);
END
$fn$;

-- Records the state of every sequence owned (serial, identity) by a registered table, and
-- forgets every other: the applier calls it in the transaction of a register or unregister
-- entry, after the change.
CREATE OR REPLACE FUNCTION replicate.track_sequences()
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    DELETE FROM replicate.sequence_state;
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
END
$fn$;

-- Records the batch's outcomes and request ids, the new state of the tracked sequences that
-- moved, and the new applied slot, in the transaction that applied the batch.
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
    UPDATE replicate.applied SET slot = p_last;
END
$fn$;
