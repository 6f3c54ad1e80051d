-- replicate schema version 7: read leases, and a chosen mark that reads only the slots it can change.
--
-- Read leases. A linearizable read costs the leader a confirmation round (Commit to every
-- acceptor, wait for a majority) unless it holds a lease: replicate/paxos/lease.py. The
-- acceptor's half:
--
-- * replicate.acceptor.lease_until: until when the holder of the promise has a read lease.
-- * replicate.commit(round, proposer, commit_upto, lease_ms): Commit as in version 4, and if
--   lease_ms > 0 and (round, proposer) is the promise, lease_until := greatest(lease_until,
--   clock_timestamp() + lease_ms). Returns the lease granted (0: none). A call that grants
--   commits synchronously: a lease lost in a crash would let this node promise a new leader
--   while the old one still answers reads from its lease. (Heartbeats ask for one every
--   ~150 ms: a few WAL flushes per second, shared by group commit with the accepts.) The
--   three-argument commit of version 4 is this one with lease_ms 0.
-- * replicate.prepare and replicate.accept refuse, with nothing written, a ballot above the
--   promise while the lease runs: one row ok=false with the promise, which is then *below*
--   the request's ballot (a Nack's promise is above it): the runtime's `Leased`.
--
-- Clock: clock_timestamp(), the server's wall clock. A lease relies on it running at about
-- the leader's rate and not being stepped forward by more than the leader's margin while a
-- lease runs (README "Guarantees").
--
-- The chosen mark ("mark chosen every slot <= upto accepted under b") read the partial index
-- log_unchosen from its start. Marking a slot is a non-HOT update (chosen is in that index's
-- predicate), so the old version's entry stays in log_unchosen until VACUUM removes it, and
-- autovacuum visits replicate.log only after ~20% of it changed (every row is marked once):
-- each accept and heartbeat walked every slot marked since the last VACUUM, in index and
-- heap. Measured on a fresh node, 13 values per accept: 1.2 ms per accept at 3,900 log rows,
-- 8 ms at 23,400 (docs/decisions.md, "The chosen mark walked the whole log").
--
-- Now the acceptor row remembers the last mark of the highest ballot it marked for
-- (marked_round, marked_proposer, marked_upto): every slot <= marked_upto accepted under
-- that ballot is chosen. A mark under that ballot looks only at (marked_upto, upto]; an
-- accept under it that stores a slot <= marked_upto lowers marked_upto below the batch
-- first (the slot may have lost its mark). A mark under another ballot looks at every slot,
-- as before, and is remembered only if its ballot is higher. Same results as before: the
-- differential test (tests/runtime/test_sql_acceptor.py) compares with the model.

ALTER TABLE replicate.acceptor ADD COLUMN IF NOT EXISTS lease_until timestamptz,
                               ADD COLUMN IF NOT EXISTS marked_round bigint,
                               ADD COLUMN IF NOT EXISTS marked_proposer integer,
                               ADD COLUMN IF NOT EXISTS marked_upto bigint;

-- Mark chosen every slot <= p_upto accepted under (p_round, p_proposer). The caller holds
-- the acceptor row (FOR UPDATE).
CREATE OR REPLACE FUNCTION replicate.mark_chosen(p_round bigint, p_proposer integer,
                                                 p_upto bigint)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_round    bigint;
    v_proposer integer;
    v_upto     bigint;
    v_from     bigint := 0;
BEGIN
    SELECT a.marked_round, a.marked_proposer, a.marked_upto INTO v_round, v_proposer, v_upto
      FROM replicate.acceptor a WHERE a.id;
    IF (v_round, v_proposer) = (p_round, p_proposer) THEN
        IF p_upto <= v_upto THEN
            RETURN;  -- every slot up to there is marked already
        END IF;
        v_from := v_upto;
    END IF;
    UPDATE replicate.log l SET chosen = true
     WHERE NOT l.chosen AND l.slot > v_from AND l.slot <= p_upto
       AND l.ballot_round = p_round AND l.ballot_proposer = p_proposer;
    IF v_round IS NULL OR (p_round, p_proposer) >= (v_round, v_proposer) THEN
        UPDATE replicate.acceptor a
           SET marked_round = p_round, marked_proposer = p_proposer, marked_upto = p_upto
         WHERE a.id;
    END IF;
END
$fn$;

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
    v_lease    timestamptz;
BEGIN
    IF p_round IS NULL OR p_round < 0 OR p_proposer IS NULL OR p_proposer < 0
       OR p_from_slot IS NULL OR p_from_slot < 1 THEN
        RAISE EXCEPTION 'replicate.prepare: invalid arguments (%, %, %)',
                        p_round, p_proposer, p_from_slot USING ERRCODE = '22023';
    END IF;
    SELECT a.promised_round, a.promised_proposer, a.lease_until INTO v_round, v_proposer, v_lease
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF (p_round, p_proposer) < (v_round, v_proposer)
       OR ((p_round, p_proposer) > (v_round, v_proposer) AND v_lease > clock_timestamp()) THEN
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
    v_lease    timestamptz;
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
    SELECT a.promised_round, a.promised_proposer, a.lease_until INTO v_round, v_proposer, v_lease
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF (p_round, p_proposer) < (v_round, v_proposer)
       OR ((p_round, p_proposer) > (v_round, v_proposer) AND v_lease > clock_timestamp()) THEN
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
    -- mark_chosen's promise (below) holds only for slots it looked at: a slot of the batch at
    -- or below marked_upto may now hold another value without a mark.
    UPDATE replicate.acceptor a SET marked_upto = p_first_slot - 1
     WHERE a.id AND (a.marked_round, a.marked_proposer) = (p_round, p_proposer)
       AND a.marked_upto >= p_first_slot;
    IF p_commit_upto > 0 THEN
        PERFORM replicate.mark_chosen(p_round, p_proposer, p_commit_upto);
    END IF;
    RETURN QUERY SELECT true, p_round, p_proposer;
END
$fn$;

CREATE OR REPLACE FUNCTION replicate.commit(p_round bigint, p_proposer integer,
                                            p_commit_upto bigint, p_lease_ms integer)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer,
               lease_ms integer)
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
DECLARE
    v_round    bigint;
    v_proposer integer;
    v_lease    timestamptz;
    v_until    timestamptz;
BEGIN
    IF p_round IS NULL OR p_round < 0 OR p_proposer IS NULL OR p_proposer < 0
       OR p_commit_upto IS NULL OR p_commit_upto < 0
       OR p_lease_ms IS NULL OR p_lease_ms < 0 OR p_lease_ms > 3600000 THEN
        RAISE EXCEPTION 'replicate.commit: invalid arguments (%, %, %, %)',
                        p_round, p_proposer, p_commit_upto, p_lease_ms USING ERRCODE = '22023',
              DETAIL = 'a lease is 0 to 3600000 ms';
    END IF;
    SELECT a.promised_round, a.promised_proposer, a.lease_until INTO v_round, v_proposer, v_lease
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF p_commit_upto > 0 THEN
        PERFORM replicate.mark_chosen(p_round, p_proposer, p_commit_upto);
    END IF;
    IF p_lease_ms > 0 AND (p_round, p_proposer) = (v_round, v_proposer) THEN
        v_until := clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0);
        IF v_lease IS NULL OR v_until > v_lease THEN
            UPDATE replicate.acceptor a SET lease_until = v_until WHERE a.id;
        END IF;
        -- granted: this transaction flushes its WAL before it answers (see the header)
        IF current_setting('synchronous_commit') = 'off' THEN
            PERFORM set_config('synchronous_commit', 'local', true);
        END IF;
        RETURN QUERY SELECT true, v_round, v_proposer, p_lease_ms;
        RETURN;
    END IF;
    -- No lease: only chosen marks, hints for learners (005_async_commit.sql).
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY SELECT (p_round, p_proposer) >= (v_round, v_proposer), v_round, v_proposer, 0;
END
$fn$;

-- Commit(b, commit_upto) without a lease, as version 4 answered it (proxies of that version
-- call it during a rolling upgrade).
CREATE OR REPLACE FUNCTION replicate.commit(p_round bigint, p_proposer integer,
                                            p_commit_upto bigint)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer)
LANGUAGE sql
AS $fn$
    SELECT c.ok, c.promised_round, c.promised_proposer
      FROM replicate.commit(p_round, p_proposer, p_commit_upto, 0) c;
$fn$;
