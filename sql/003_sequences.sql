-- replicate schema version 2: sequence states committed with the applied slot.
--
-- nextval() is not transactional: an apply transaction that fails for a local reason and is
-- retried would advance a sequence twice on that node, and crash recovery may move a sequence
-- ahead by up to 32 values. The applier records, in each apply transaction, the state of every
-- sequence owned by a registered table, and restores exactly that state (setval) before it
-- applies the next batch. So every node draws the same values in the same slots.
CREATE TABLE IF NOT EXISTS replicate.sequence_state (
    sequence_name text PRIMARY KEY,      -- quoted, schema-qualified
    last_value bigint NOT NULL,
    is_called boolean NOT NULL
);
