-- replicate schema version 1: the tables every PostgreSQL node of a cluster holds.
--
-- Loaded by replicate/runtime/schema.py inside one transaction, under an advisory lock, only
-- when the node's recorded schema_version is below the version in the first line. Statements
-- are idempotent anyway (IF NOT EXISTS, ON CONFLICT DO NOTHING), so a half-known state heals.
-- Table and column names are a contract with the applier and the runtime: change them only
-- through a new versioned file.

CREATE SCHEMA IF NOT EXISTS replicate;

-- Key/value facts about this installation ('schema_version' -> '1').
CREATE TABLE IF NOT EXISTS replicate.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- The acceptor's promise: exactly one row (id is always true). Every acceptor function locks
-- this row FOR UPDATE first, which serialises concurrent calls on one node.
CREATE TABLE IF NOT EXISTS replicate.acceptor (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    promised_round    bigint  NOT NULL DEFAULT 0,
    promised_proposer integer NOT NULL DEFAULT 0
);
INSERT INTO replicate.acceptor (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- The acceptor's log: per slot the accepted (ballot, value) and the chosen mark.
CREATE TABLE IF NOT EXISTS replicate.log (
    slot            bigint  PRIMARY KEY CHECK (slot >= 1),
    ballot_round    bigint  NOT NULL,
    ballot_proposer integer NOT NULL,
    request_id      text    NOT NULL,
    payload         bytea   NOT NULL,
    chosen          boolean NOT NULL DEFAULT false
);
-- The mark step only looks at unchosen slots: this index stays as small as the window of
-- slots in flight, however long the log grows.
CREATE INDEX IF NOT EXISTS log_unchosen ON replicate.log (slot) WHERE NOT chosen;

-- HardState of each replica (proxy): the highest ballot round it has used. Never decreases.
CREATE TABLE IF NOT EXISTS replicate.replica_state (
    replica_id integer PRIMARY KEY,
    round      bigint  NOT NULL
);

-- The applier's position: the highest slot applied to this node's tables. Exactly one row.
CREATE TABLE IF NOT EXISTS replicate.applied (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    slot bigint  NOT NULL DEFAULT 0
);
INSERT INTO replicate.applied (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- Per applied slot, what happened (answered to the submitter, compared across nodes).
CREATE TABLE IF NOT EXISTS replicate.outcomes (
    slot          bigint PRIMARY KEY,
    request_id    text   NOT NULL,
    status        text   NOT NULL
                  CHECK (status IN ('ok', 'error', 'duplicate', 'noop', 'control')),
    command_tag   text,
    rows_affected bigint,
    sqlstate      text,
    message       text,
    detail        text,
    hint          text,
    result        bytea
);

-- Request ids already applied, and where: a retried request applies at most once.
CREATE TABLE IF NOT EXISTS replicate.requests (
    request_id text   PRIMARY KEY,
    slot       bigint NOT NULL
);

-- Tables whose writes go through the log, and the slot from which they do.
CREATE TABLE IF NOT EXISTS replicate.registered_tables (
    table_name text   PRIMARY KEY,
    since_slot bigint NOT NULL
);

-- Cluster members, and the slot at which each joined.
CREATE TABLE IF NOT EXISTS replicate.members (
    name        text   PRIMARY KEY,
    joined_slot bigint NOT NULL DEFAULT 0
);
