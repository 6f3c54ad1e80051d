-- replicate schema version 1: the acceptor functions and the guard trigger function.
--
-- Each acceptor function implements one operation of replicate/paxos/acceptor.py (`Acceptor`
-- + `InMemoryAcceptorStorage.apply`) exactly; tests/runtime/test_sql_acceptor.py compares them
-- on generated operation sequences. Called in autocommit mode, a call is one transaction, so
-- the promise and the accepted values are durable when the reply leaves the server. Each
-- function first locks the one replicate.acceptor row FOR UPDATE: concurrent calls on a node
-- run one after the other. Ballots compare as (round, proposer), lexicographically.
--
-- The mark step ("mark chosen every slot <= upto whose accepted ballot is b") reads only the
-- partial index log_unchosen, so its cost follows the slots in flight, not the log length.

-- Phase 1: Prepare(b, from_slot).
-- Nack: one row ok=false carrying the promise, other columns NULL.
-- Promise: ok=true rows, one per accepted entry at slot >= from_slot ascending, or a single
-- row with NULL slot if there is none.
CREATE OR REPLACE FUNCTION replicate.prepare(p_round bigint, p_proposer integer,
                                             p_from_slot bigint)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer, slot bigint,
               ballot_round bigint, ballot_proposer integer, request_id text, payload bytea,
               chosen boolean)
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
DECLARE
    v_round    bigint;
    v_proposer integer;
BEGIN
    IF p_round IS NULL OR p_round < 0 OR p_proposer IS NULL OR p_proposer < 0
       OR p_from_slot IS NULL OR p_from_slot < 1 THEN
        RAISE EXCEPTION 'replicate.prepare: invalid arguments (%, %, %)',
                        p_round, p_proposer, p_from_slot USING ERRCODE = '22023';
    END IF;
    SELECT a.promised_round, a.promised_proposer INTO v_round, v_proposer
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF (p_round, p_proposer) < (v_round, v_proposer) THEN
        RETURN QUERY SELECT false, v_round, v_proposer, NULL::bigint, NULL::bigint,
                            NULL::integer, NULL::text, NULL::bytea, NULL::boolean;
        RETURN;
    END IF;
    IF (p_round, p_proposer) <> (v_round, v_proposer) THEN
        UPDATE replicate.acceptor a SET promised_round = p_round, promised_proposer = p_proposer
         WHERE a.id;
    END IF;
    RETURN QUERY SELECT true, p_round, p_proposer, l.slot, l.ballot_round, l.ballot_proposer,
                        l.request_id, l.payload, l.chosen
                   FROM replicate.log l WHERE l.slot >= p_from_slot ORDER BY l.slot;
    IF NOT FOUND THEN
        RETURN QUERY SELECT true, p_round, p_proposer, NULL::bigint, NULL::bigint,
                            NULL::integer, NULL::text, NULL::bytea, NULL::boolean;
    END IF;
END
$fn$;

-- Phase 2: Accept(b, first_slot, values, commit_upto), values given as two parallel arrays.
-- One row: ok=false with the promise (Nack), or ok=true with the promise, now b (Accepted).
CREATE OR REPLACE FUNCTION replicate.accept(p_round bigint, p_proposer integer,
                                            p_first_slot bigint, p_request_ids text[],
                                            p_payloads bytea[], p_commit_upto bigint)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer)
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
DECLARE
    v_round    bigint;
    v_proposer integer;
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
    SELECT a.promised_round, a.promised_proposer INTO v_round, v_proposer
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF (p_round, p_proposer) < (v_round, v_proposer) THEN
        RETURN QUERY SELECT false, v_round, v_proposer;
        RETURN;
    END IF;
    IF (p_round, p_proposer) <> (v_round, v_proposer) THEN
        UPDATE replicate.acceptor a SET promised_round = p_round, promised_proposer = p_proposer
         WHERE a.id;
    END IF;
    -- The whole batch in one statement. A slot keeps its chosen mark only if the value it
    -- holds is the value accepted now (same request id and payload).
    INSERT INTO replicate.log AS l (slot, ballot_round, ballot_proposer, request_id, payload,
                                    chosen)
    SELECT p_first_slot + v.n - 1, p_round, p_proposer, v.request_id, v.payload, false
      FROM unnest(p_request_ids, p_payloads) WITH ORDINALITY AS v(request_id, payload, n)
    ON CONFLICT (slot) DO UPDATE
       SET ballot_round = EXCLUDED.ballot_round,
           ballot_proposer = EXCLUDED.ballot_proposer,
           request_id = EXCLUDED.request_id,
           payload = EXCLUDED.payload,
           chosen = l.chosen AND l.request_id = EXCLUDED.request_id
                    AND l.payload = EXCLUDED.payload;
    IF p_commit_upto > 0 THEN
        UPDATE replicate.log l SET chosen = true
         WHERE NOT l.chosen AND l.slot <= p_commit_upto
           AND l.ballot_round = p_round AND l.ballot_proposer = p_proposer;
    END IF;
    RETURN QUERY SELECT true, p_round, p_proposer;
END
$fn$;

-- Commit(b, commit_upto) is defined in 005_async_commit.sql (schema version 4), its only
-- definition: it commits asynchronously since then, and a fresh install runs every file.

-- Fetch(from_slot, limit): the first `limit` chosen entries at slot >= from_slot, ascending.
-- Reads only; takes no lock (a chosen entry never changes its value).
CREATE OR REPLACE FUNCTION replicate.fetch(p_from_slot bigint, p_limit integer)
RETURNS TABLE (slot bigint, request_id text, payload bytea)
LANGUAGE sql STABLE
AS $fn$
    SELECT l.slot, l.request_id, l.payload
      FROM replicate.log l
     WHERE l.chosen AND l.slot >= p_from_slot
     ORDER BY l.slot
     LIMIT greatest(p_limit, 0);
$fn$;

-- A replica's HardState: the highest round it has used, never decreasing. Returns the round
-- now stored (>= p_round).
CREATE OR REPLACE FUNCTION replicate.save_round(p_replica integer, p_round bigint)
RETURNS bigint
LANGUAGE sql
AS $fn$
    INSERT INTO replicate.replica_state AS s (replica_id, round) VALUES (p_replica, p_round)
    ON CONFLICT (replica_id) DO UPDATE SET round = greatest(s.round, EXCLUDED.round)
    RETURNING s.round;
$fn$;

-- Trigger function on every registered table (BEFORE ... FOR EACH STATEMENT, or FOR EACH ROW):
-- refuses any write unless the applier is running it (SET LOCAL replicate.applying = on).
-- SQLSTATE 55000 (object_not_in_prerequisite_state): the table is in a state, replicated,
-- that forbids direct writes. It is deliberately outside the classes the applier treats as
-- deterministic (22, 23, 42, ...): if it ever fires inside an apply transaction, that is a
-- local fault of this node, and the applier stalls instead of recording it as the outcome.
CREATE OR REPLACE FUNCTION replicate.guard()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF current_setting('replicate.applying', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION '% on table %.% refused: the table is replicated by replicate',
                        TG_OP, quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME)
              USING ERRCODE = '55000',
                    DETAIL = 'A direct write to one node would make it diverge from the '
                             'other nodes of the cluster.',
                    HINT = 'Write through a replicate proxy, which orders every write to a '
                           'registered table through the replicated log.';
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$fn$;
