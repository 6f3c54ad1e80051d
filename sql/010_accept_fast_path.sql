-- replicate schema version 8: an accept that appends takes a plain INSERT, and fewer statements per accept and apply.
--
-- Measured with perf on the nodes of a local cluster under pgbench's upsert (docs/decisions.md,
-- "Fewer statements per accept and apply"): most of an acceptor backend's CPU went to setting
-- up statements, not to the rows. Version 7's accept ran up to eight SQL statements per call
-- (lock the acceptor row, INSERT ... ON CONFLICT, lower marked_upto, call mark_chosen, which
-- reads the row, marks, and updates it again, then RETURN QUERY), and INSERT ... ON CONFLICT
-- sets up its arbiter index check and update projection on every execution although a leader's
-- accept almost always appends slots nobody stored yet.
--
-- * replicate.acceptor.accepted_upto: at least the highest slot in replicate.log (0: none).
--   Only accept writes the log, and it raises accepted_upto in the same transaction.
-- * accept: an Accept whose first slot is above accepted_upto cannot meet a stored slot, so
--   it is a plain INSERT; any other takes version 7's INSERT ... ON CONFLICT. The chosen mark
--   (version 7's mark_chosen, same rules) runs inline, and the acceptor row is read once and
--   written once (promise, mark, accepted_upto). The reply is RETURN NEXT, not a query.
--   Same replies and end states as version 7: the differential test
--   (tests/runtime/test_sql_acceptor.py) compares both paths with the model.
-- * apply_finish: the batch's request ids go into replicate.requests without GROUP BY (both
--   applier paths give a request id at most one slot per batch that is not 'duplicate'; a
--   second one would fail the primary key, the careful path's signal, as before), and
--   replicate.sequence_state is updated only when it tracks a sequence.

ALTER TABLE replicate.acceptor ADD COLUMN IF NOT EXISTS accepted_upto bigint;
UPDATE replicate.acceptor a
   SET accepted_upto = greatest(coalesce(a.accepted_upto, 0),
                                coalesce((SELECT max(l.slot) FROM replicate.log l), 0));
ALTER TABLE replicate.acceptor ALTER COLUMN accepted_upto SET DEFAULT 0,
                               ALTER COLUMN accepted_upto SET NOT NULL;

CREATE OR REPLACE FUNCTION replicate.accept(p_round bigint, p_proposer integer,
                                            p_first_slot bigint, p_request_ids text[],
                                            p_payloads bytea[], p_commit_upto bigint)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer)
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
DECLARE
    v_round     bigint;
    v_proposer  integer;
    v_lease     timestamptz;
    v_mround    bigint;
    v_mproposer integer;
    v_mupto     bigint;
    v_accepted  bigint;
    v_last      bigint;
    v_from      bigint;
BEGIN
    IF p_round IS NULL OR p_round < 0 OR p_proposer IS NULL OR p_proposer < 0
       OR p_first_slot IS NULL OR p_first_slot < 1
       OR p_commit_upto IS NULL OR p_commit_upto < 0
       OR cardinality(p_request_ids) IS DISTINCT FROM cardinality(p_payloads)
       OR coalesce(cardinality(p_request_ids), 0) = 0
       OR array_ndims(p_request_ids) <> 1 OR array_ndims(p_payloads) <> 1 THEN
        RAISE EXCEPTION 'replicate.accept: invalid arguments' USING ERRCODE = '22023',
              DETAIL = 'round and proposer >= 0, first slot >= 1, commit_upto >= 0, and two '
                       'non-empty one-dimensional arrays of equal length are required';
    END IF;
    SELECT a.promised_round, a.promised_proposer, a.lease_until, a.marked_round,
           a.marked_proposer, a.marked_upto, a.accepted_upto
      INTO v_round, v_proposer, v_lease, v_mround, v_mproposer, v_mupto, v_accepted
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF (p_round, p_proposer) < (v_round, v_proposer)
       OR ((p_round, p_proposer) > (v_round, v_proposer) AND v_lease > clock_timestamp()) THEN
        ok := false;
        promised_round := v_round;
        promised_proposer := v_proposer;
        RETURN NEXT;
        RETURN;
    END IF;
    v_last := p_first_slot + cardinality(p_request_ids) - 1;
    IF p_first_slot > v_accepted THEN
        -- Appending: no slot of the batch is stored.
        INSERT INTO replicate.log (slot, ballot_round, ballot_proposer, request_id, payload,
                                   chosen)
        SELECT p_first_slot + v.n - 1, p_round, p_proposer, v.request_id, v.payload, false
          FROM unnest(p_request_ids, p_payloads) WITH ORDINALITY AS v(request_id, payload, n);
    ELSE
        -- A slot keeps its chosen mark only if the value it holds is the value accepted now
        -- (same request id and payload).
        INSERT INTO replicate.log AS l (slot, ballot_round, ballot_proposer, request_id,
                                        payload, chosen)
        SELECT p_first_slot + v.n - 1, p_round, p_proposer, v.request_id, v.payload, false
          FROM unnest(p_request_ids, p_payloads) WITH ORDINALITY AS v(request_id, payload, n)
        ON CONFLICT (slot) DO UPDATE
           SET ballot_round = EXCLUDED.ballot_round,
               ballot_proposer = EXCLUDED.ballot_proposer,
               request_id = EXCLUDED.request_id,
               payload = EXCLUDED.payload,
               chosen = l.chosen AND l.request_id = EXCLUDED.request_id
                        AND l.payload = EXCLUDED.payload;
    END IF;
    -- The remembered mark promises only slots it looked at: a slot of the batch at or below
    -- marked_upto may now hold a value without a mark (also when appending: a Commit may have
    -- marked up to a slot this acceptor had not stored yet).
    IF (v_mround, v_mproposer) = (p_round, p_proposer) AND v_mupto >= p_first_slot THEN
        v_mupto := p_first_slot - 1;
    END IF;
    -- The chosen mark, as version 7's mark_chosen: a mark under the remembered ballot looks
    -- only above marked_upto; under another ballot at every slot, and is remembered only if
    -- its ballot is not lower.
    IF p_commit_upto > 0 AND ((v_mround, v_mproposer) IS DISTINCT FROM (p_round, p_proposer)
                              OR p_commit_upto > v_mupto) THEN
        v_from := CASE WHEN (v_mround, v_mproposer) = (p_round, p_proposer) THEN v_mupto
                       ELSE 0 END;
        UPDATE replicate.log l SET chosen = true
         WHERE NOT l.chosen AND l.slot > v_from AND l.slot <= p_commit_upto
           AND l.ballot_round = p_round AND l.ballot_proposer = p_proposer;
        IF v_mround IS NULL OR (p_round, p_proposer) >= (v_mround, v_mproposer) THEN
            v_mround := p_round;
            v_mproposer := p_proposer;
            v_mupto := p_commit_upto;
        END IF;
    END IF;
    UPDATE replicate.acceptor a
       SET promised_round = p_round, promised_proposer = p_proposer,
           marked_round = v_mround, marked_proposer = v_mproposer, marked_upto = v_mupto,
           accepted_upto = greatest(v_accepted, v_last)
     WHERE a.id;
    ok := true;
    promised_round := p_round;
    promised_proposer := p_proposer;
    RETURN NEXT;
END
$fn$;

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
    SELECT u.request_id, u.slot FROM unnest(p_request_ids, p_slots, p_statuses)
                                     AS u(request_id, slot, status)
     WHERE u.request_id <> '' AND u.status <> 'duplicate';
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
