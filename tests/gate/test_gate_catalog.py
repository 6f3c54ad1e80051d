"""load_catalog against a real PostgreSQL node, and the gate deciding with what it loaded."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import psycopg
import pytest

from replicate.gate import Catalog, ColumnInfo, Read, Refuse, Replicate, TableName, classify
from replicate.gate import load_catalog

pytestmark = pytest.mark.e2e

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)

SCHEMA = """
CREATE SCHEMA app;
CREATE DOMAIN stamp AS timestamptz DEFAULT clock_timestamp();
CREATE TABLE accounts (
    id serial PRIMARY KEY,
    owner text NOT NULL,
    token uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    created_at timestamptz DEFAULT now(),
    updated date DEFAULT (CURRENT_DATE + 1),
    balance numeric DEFAULT 0,
    note text DEFAULT 'x'::text,
    nick text UNIQUE,
    gen int GENERATED ALWAYS AS (length(owner)) STORED,
    seen stamp
);
CREATE TABLE app."Orders" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int);
CREATE TABLE local_log (x int);
CREATE SEQUENCE free_seq;
CREATE FUNCTION app.bump() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
CREATE FUNCTION slugify(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1)';
CREATE FUNCTION slugify(int) RETURNS text LANGUAGE sql VOLATILE AS 'SELECT $1::text';
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql
    AS 'BEGIN NEW.created_at := now(); RETURN NEW; END';
CREATE FUNCTION same() RETURNS trigger LANGUAGE plpgsql STABLE AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER a_stamp BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TRIGGER b_same BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION same();
CREATE TRIGGER o_same BEFORE UPDATE ON app."Orders" FOR EACH ROW EXECUTE FUNCTION same();
"""


@pytest.fixture
def node(fresh_db):
    with psycopg.connect(fresh_db[0], autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("SET search_path = app, public")
        yield conn


def test_load_catalog_reads_tables_defaults_keys_functions(node) -> None:
    cat = load_catalog(node, ["accounts", 'app."Orders"', "public.missing"])
    acc = cat.tables[TableName("public", "accounts")]
    cols = {c.name: c for c in acc.columns}
    assert [c.name for c in acc.columns][:3] == ["id", "owner", "token"]
    assert cols["id"] == ColumnInfo("id", "nextval('public.accounts_id_seq'::regclass)",
                                    False, True)
    assert cols["token"].volatile_default and cols["created_at"].volatile_default
    assert cols["updated"].volatile_default
    assert not cols["balance"].volatile_default and not cols["note"].volatile_default
    assert cols["gen"].default is None and not cols["gen"].volatile_default
    assert cols["seen"].default == "clock_timestamp()" and cols["seen"].volatile_default
    assert frozenset({"id"}) in acc.unique_keys and frozenset({"token"}) in acc.unique_keys
    assert frozenset({"nick"}) not in acc.unique_keys  # nullable: does not fix an order
    orders = cat.tables[TableName("app", "Orders")]
    assert orders.columns[0].sequence_default
    assert TableName("public", "missing") not in cat.tables
    assert cat.sequences[TableName("public", "accounts_id_seq")] == TableName("public", "accounts")
    assert cat.sequences[TableName("app", "Orders_id_seq")] == TableName("app", "Orders")
    assert TableName("public", "free_seq") not in cat.sequences
    assert TableName("public", "local_log") in cat.relations
    assert cat.functions[("app", "bump")] == "v"
    assert cat.functions[("public", "slugify")] == "v"  # the most volatile overload wins
    assert "port" in cat.node_local_settings and "timezone" not in cat.node_local_settings
    assert cat.triggers == {TableName("public", "accounts"): ("a_stamp",)}
    # the loader restores the session's search_path
    assert node.execute("SHOW search_path").fetchone()[0] == "app, public"


def test_loaded_catalog_drives_decisions(node) -> None:
    node.execute("DROP TRIGGER a_stamp ON accounts")
    cat = load_catalog(node, ["accounts", 'app."Orders"'])
    (d,) = classify("INSERT INTO accounts (owner) VALUES ('ann')", cat, now=NOW,
                    rng=random.Random(1))
    assert isinstance(d, Replicate)
    assert "created_at" in d.text and "'2026-11-26 08:00:00.123456+00'::timestamptz" in d.text
    # the materialised statement really runs, with the spliced values
    node.execute("SET search_path = public")
    node.execute(d.text)
    row = node.execute("SELECT owner, created_at, updated FROM accounts").fetchone()
    assert row[0] == "ann" and row[1] == NOW
    (d,) = classify("UPDATE accounts SET owner = slugify(owner)", cat, now=NOW,
                    rng=random.Random(1))
    assert isinstance(d, Refuse) and d.error.reason == "volatile-function"
    (d,) = classify("SELECT * FROM local_log, accounts", cat, now=NOW, rng=random.Random(1))
    assert isinstance(d, Read)


def test_rewritten_literals_are_what_postgres_computes(node) -> None:
    """Each clock literal has the type and value PostgreSQL gives the function at NOW."""
    cat = Catalog.of("public.local_log")
    node.execute("SET TimeZone = 'Asia/Kolkata'")
    pairs = ["now()", "current_timestamp", "current_timestamp(2)", "current_date",
             "current_time", "current_time(3)", "localtime", "localtime(1)",
             "localtimestamp", "localtimestamp(4)", "transaction_timestamp()"]
    for expr in pairs:
        (d,) = classify(f"INSERT INTO local_log SELECT 1 WHERE {expr} IS NOT NULL", cat,
                        now=NOW, rng=random.Random(1))
        literal = d.text.split("WHERE ", 1)[1].removesuffix(" IS NOT NULL")
        # PostgreSQL's own rounding of the full instant gives the value we wrote down
        full = "'2026-11-26 08:00:00.123456+00'"
        unrounded = full + literal[literal.index("'::"):][1:]
        got = node.execute(f"SELECT pg_typeof({literal})::text, pg_typeof({expr})::text, "
                           f"{literal} = {unrounded}").fetchone()
        assert got[0] == got[1], expr
        assert got[2] is True, (expr, literal)
