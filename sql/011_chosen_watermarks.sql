-- replicate schema version 9: chosen marks are watermarks per ballot, not a second version of every log row.
--
-- Version 8 marked a slot chosen by updating its log row (chosen = true). On every node, for
-- every write, that was a second, non-HOT version of a row that holds the whole payload
-- (chosen is in log_unchosen's predicate), a second log_pkey entry, a dead tuple for VACUUM,
-- and ~190 bytes of WAL (docs/decisions.md, "Chosen marks as watermarks"). Now a mark
-- (b, upto) only records upto for ballot b:
--
-- * the acceptor row's (marked_round, marked_proposer, marked_upto), as since version 7, for
--   the highest ballot marked: the leader's, in the steady state, so a mark is the UPDATE of
--   the acceptor row that accept and commit make anyway;
-- * replicate.marks, one row per other ballot that marked slots here (a leader's ballot
--   moves there when a higher one marks): a few rows, one per leader change at most.
--
-- A log row is chosen when its flag is set, or a watermark of its ballot is at or above its
-- slot (the view replicate.log_marked; prepare and fetch read it). The model marks only the
-- slots stored when a mark arrives (replicate/paxos/acceptor.py), so an accept under ballot b
-- that stores a slot at or below b's watermark first sets the flag of every slot that
-- watermark covers from the batch's first slot on, then lowers the watermark below the
-- batch: a range of a few slots, only on a retransmission. The flag stays for that case and
-- for a value that keeps its mark when it is accepted again under another ballot. Same
-- replies and end states as version 8: the differential test (tests/runtime/
-- test_sql_acceptor.py) compares every function with the model.
--
-- log_unchosen is dropped: no mark reads it now (a flag is set only in a slot range).
-- Upgrading keeps every flag and the acceptor row's watermark: in version 8 every slot it
-- covers already has its flag.

CREATE TABLE IF NOT EXISTS replicate.marks (
    ballot_round    bigint  NOT NULL,
    ballot_proposer integer NOT NULL,
    upto            bigint  NOT NULL,
    PRIMARY KEY (ballot_round, ballot_proposer)
);

DROP INDEX IF EXISTS replicate.log_unchosen;

-- The log with each slot's chosen mark as this acceptor knows it.
CREATE OR REPLACE VIEW replicate.log_marked AS
SELECT l.slot, l.ballot_round, l.ballot_proposer, l.request_id, l.payload,
       l.chosen
       OR coalesce(l.slot <= (SELECT a.marked_upto FROM replicate.acceptor a
                               WHERE a.id AND a.marked_round = l.ballot_round
                                 AND a.marked_proposer = l.ballot_proposer), false)
       OR EXISTS (SELECT FROM replicate.marks m
                   WHERE m.ballot_round = l.ballot_round
                     AND m.ballot_proposer = l.ballot_proposer AND l.slot <= m.upto)
       AS chosen
  FROM replicate.log l;

-- Raise ballot (p_round, p_proposer)'s watermark in replicate.marks to p_upto (never lower it).
CREATE OR REPLACE FUNCTION replicate.save_mark(p_round bigint, p_proposer integer,
                                               p_upto bigint)
RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO replicate.marks AS m VALUES (p_round, p_proposer, p_upto)
    ON CONFLICT (ballot_round, ballot_proposer)
       DO UPDATE SET upto = greatest(m.upto, EXCLUDED.upto);
$fn$;

-- Record the mark (p_round, p_proposer, p_upto): the acceptor row keeps the highest ballot's
-- watermark, replicate.marks the others'. The caller holds the acceptor row (FOR UPDATE).
CREATE OR REPLACE FUNCTION replicate.mark_chosen(p_round bigint, p_proposer integer,
                                                 p_upto bigint)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_round    bigint;
    v_proposer integer;
    v_upto     bigint;
BEGIN
    IF p_upto <= 0 THEN
        RETURN;
    END IF;
    SELECT a.marked_round, a.marked_proposer, a.marked_upto INTO v_round, v_proposer, v_upto
      FROM replicate.acceptor a WHERE a.id;
    IF (v_round, v_proposer) = (p_round, p_proposer) THEN
        IF p_upto > v_upto THEN
            UPDATE replicate.acceptor a SET marked_upto = p_upto WHERE a.id;
        END IF;
    ELSIF v_round IS NULL OR (p_round, p_proposer) > (v_round, v_proposer) THEN
        -- a higher ballot: it was never marked here; the old watermark keeps its slots
        IF v_round IS NOT NULL THEN
            PERFORM replicate.save_mark(v_round, v_proposer, v_upto);
        END IF;
        UPDATE replicate.acceptor a
           SET marked_round = p_round, marked_proposer = p_proposer, marked_upto = p_upto
         WHERE a.id;
    ELSE
        PERFORM replicate.save_mark(p_round, p_proposer, p_upto);
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
                   FROM replicate.log_marked l WHERE l.slot >= p_from_slot ORDER BY l.slot;
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
    v_round     bigint;
    v_proposer  integer;
    v_lease     timestamptz;
    v_mround    bigint;
    v_mproposer integer;
    v_mupto     bigint;
    v_accepted  bigint;
    v_last      bigint;
    v_upto      bigint;
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
    -- A watermark of this ballot must not cover a slot of the batch (see the header): the
    -- slots it covers from the batch on get their flag, and it drops below the batch. Unless
    -- this accept's own mark reaches it: then every slot it covered is covered again after the
    -- batch is stored, and so is every slot of the batch up to p_commit_upto, which the model
    -- marks too (a leader's retransmissions and the values a thrifty leader sends the third
    -- node at a heartbeat carry its commit index). The watermark is the acceptor row's when
    -- the ballot is the one it remembers, else replicate.marks'.
    IF (v_mround, v_mproposer) = (p_round, p_proposer) THEN
        v_upto := v_mupto;
    ELSE
        SELECT m.upto INTO v_upto FROM replicate.marks m
         WHERE m.ballot_round = p_round AND m.ballot_proposer = p_proposer;
    END IF;
    IF v_upto >= p_first_slot AND p_commit_upto < v_upto THEN
        IF p_first_slot <= v_accepted THEN
            UPDATE replicate.log l SET chosen = true
             WHERE l.slot >= p_first_slot AND l.slot <= v_upto AND NOT l.chosen
               AND l.ballot_round = p_round AND l.ballot_proposer = p_proposer;
        END IF;
        IF (v_mround, v_mproposer) = (p_round, p_proposer) THEN
            v_mupto := p_first_slot - 1;
        ELSE
            UPDATE replicate.marks m SET upto = p_first_slot - 1
             WHERE m.ballot_round = p_round AND m.ballot_proposer = p_proposer;
        END IF;
    END IF;
    IF p_first_slot > v_accepted THEN
        -- Appending: no slot of the batch is stored.
        INSERT INTO replicate.log (slot, ballot_round, ballot_proposer, request_id, payload,
                                   chosen)
        SELECT p_first_slot + v.n - 1, p_round, p_proposer, v.request_id, v.payload, false
          FROM unnest(p_request_ids, p_payloads) WITH ORDINALITY AS v(request_id, payload, n);
    ELSE
        -- A slot keeps its chosen mark (its flag, or a watermark of the ballot it was
        -- accepted under) only if the value it holds is the value accepted now (same request
        -- id and payload).
        INSERT INTO replicate.log AS l (slot, ballot_round, ballot_proposer, request_id,
                                        payload, chosen)
        SELECT p_first_slot + v.n - 1, p_round, p_proposer, v.request_id, v.payload, false
          FROM unnest(p_request_ids, p_payloads) WITH ORDINALITY AS v(request_id, payload, n)
        ON CONFLICT (slot) DO UPDATE
           SET ballot_round = EXCLUDED.ballot_round,
               ballot_proposer = EXCLUDED.ballot_proposer,
               request_id = EXCLUDED.request_id,
               payload = EXCLUDED.payload,
               chosen = (l.chosen
                         OR coalesce((l.ballot_round, l.ballot_proposer)
                                     = (v_mround, v_mproposer) AND l.slot <= v_mupto, false)
                         OR EXISTS (SELECT FROM replicate.marks m
                                     WHERE m.ballot_round = l.ballot_round
                                       AND m.ballot_proposer = l.ballot_proposer
                                       AND l.slot <= m.upto))
                        AND l.request_id = EXCLUDED.request_id
                        AND l.payload = EXCLUDED.payload;
    END IF;
    -- The mark (p_round, p_proposer, p_commit_upto), as mark_chosen records it; in the
    -- steady state only the acceptor row's watermark moves, in the UPDATE below.
    IF p_commit_upto > 0 THEN
        IF (v_mround, v_mproposer) = (p_round, p_proposer) THEN
            v_mupto := greatest(v_mupto, p_commit_upto);
        ELSIF v_mround IS NULL OR (p_round, p_proposer) > (v_mround, v_mproposer) THEN
            IF v_mround IS NOT NULL THEN
                PERFORM replicate.save_mark(v_mround, v_mproposer, v_mupto);
            END IF;
            v_mround := p_round;
            v_mproposer := p_proposer;
            v_mupto := p_commit_upto;
        ELSE
            PERFORM replicate.save_mark(p_round, p_proposer, p_commit_upto);
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

-- Fetch(from_slot, limit): the first `limit` chosen entries at slot >= from_slot, ascending.
-- Reads only; takes no lock (a chosen entry never changes its value).
CREATE OR REPLACE FUNCTION replicate.fetch(p_from_slot bigint, p_limit integer)
RETURNS TABLE (slot bigint, request_id text, payload bytea)
LANGUAGE sql STABLE
AS $fn$
    SELECT l.slot, l.request_id, l.payload
      FROM replicate.log_marked l
     WHERE l.chosen AND l.slot >= p_from_slot
     ORDER BY l.slot
     LIMIT greatest(p_limit, 0);
$fn$;
