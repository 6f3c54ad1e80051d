-- replicate schema version 4: Commit (heartbeat, read confirmation) commits asynchronously.
--
-- replicate.commit only marks slots chosen (and answers whether its ballot still holds). Each
-- call locked the acceptor row and so waited for a WAL flush: one fsync per heartbeat and per
-- linearizable read on every node (BENCHMARKS.md: ~1 WAL sync per read). A mark is a hint:
-- whether a slot is chosen is decided by the accepts of a majority, which stay synchronous.
-- A mark lost in a crash only delays learners until the leader's next Commit (or a new
-- leader's recovery) marks the slot again; WAL order guarantees a surviving mark's accept
-- survived too. The reply's meaning is unchanged, so the differential test still applies.
--
-- Commit(b, commit_upto): mark chosen every slot <= commit_upto accepted under b, whatever
-- the promise is (the message states a fact about ballot b); then ok = (b >= promise).
CREATE OR REPLACE FUNCTION replicate.commit(p_round bigint, p_proposer integer,
                                            p_commit_upto bigint)
RETURNS TABLE (ok boolean, promised_round bigint, promised_proposer integer)
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
DECLARE
    v_round    bigint;
    v_proposer integer;
BEGIN
    IF p_round IS NULL OR p_round < 0 OR p_proposer IS NULL OR p_proposer < 0
       OR p_commit_upto IS NULL OR p_commit_upto < 0 THEN
        RAISE EXCEPTION 'replicate.commit: invalid arguments (%, %, %)',
                        p_round, p_proposer, p_commit_upto USING ERRCODE = '22023';
    END IF;
    -- A chosen mark is a hint for learners, never needed for safety: do not wait for a WAL
    -- flush on every heartbeat and read confirmation (see the header of this file).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT a.promised_round, a.promised_proposer INTO v_round, v_proposer
      FROM replicate.acceptor a WHERE a.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replicate.acceptor has no row' USING ERRCODE = '55000',
              HINT = 'run `replicate init` to repair the replicate schema';
    END IF;
    IF p_commit_upto > 0 THEN
        UPDATE replicate.log l SET chosen = true
         WHERE NOT l.chosen AND l.slot <= p_commit_upto
           AND l.ballot_round = p_round AND l.ballot_proposer = p_proposer;
    END IF;
    RETURN QUERY SELECT (p_round, p_proposer) >= (v_round, v_proposer), v_round, v_proposer;
END
$fn$;
