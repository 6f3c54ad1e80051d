"""explain(): the typed result, the CLI command, and --config against real nodes."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import psycopg
import pytest
from typer.testing import CliRunner

from replicate.cli import app
from replicate.gate import Catalog
from replicate.gate.explain import explain

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)


def test_explain_describes_each_statement() -> None:
    e = explain("SELECT 1; UPDATE accounts SET at = now() WHERE id = 1; "
                "SELECT * FROM accounts; DELETE FROM accounts WHERE random() < .5",
                Catalog.of("accounts"), now=NOW, rng=random.Random(1))
    actions = [s.action for s in e.statements]
    assert actions == ["relay", "replicate", "read", "refuse"]
    rep = e.statements[1]
    assert rep.writes == ("public.accounts",)
    assert rep.rewritten == ("UPDATE accounts SET at = '2026-11-26 08:00:00.123456+00'"
                             "::timestamptz WHERE id = 1")
    ref = e.statements[3].to_dict()
    assert ref["sqlstate"] == "0A000" and ref["reason"] == "volatile-per-row" and ref["hint"]
    read = e.statements[2].to_dict()
    assert read["source"] == "SELECT * FROM accounts" and read["reads"] == ("public.accounts",)
    assert e.sql[read["start"]:read["end"]] == read["source"]


def test_cli_explain_json() -> None:
    r = CliRunner().invoke(app, ["explain", "INSERT INTO app.t (a) VALUES (now())",
                                 "--table", "app.t", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    (st,) = doc["statements"]
    assert st["action"] == "replicate" and st["writes"] == ["app.t"]
    assert "::timestamptz" in st["rewritten"]


def test_cli_explain_human_refusal_and_search_path() -> None:
    r = CliRunner().invoke(app, ["explain", "UPDATE t SET x = random()", "--table", "app.t",
                                 "--search-path", "app,public"])
    assert r.exit_code == 0, r.output
    assert "REFUSE" in r.output and "0A000" in r.output and "hint" in r.output
    r = CliRunner().invoke(app, ["explain", "UPDATE t SET x = random()", "--table", "app.t"])
    assert "RELAY" in r.output


@pytest.mark.e2e
def test_cli_explain_with_config_reads_the_catalog(fresh_db, tmp_path) -> None:
    with psycopg.connect(fresh_db[1], autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id serial PRIMARY KEY, owner text, "
                     "created_at timestamptz DEFAULT now())")
    cfg = tmp_path / "cluster.toml"
    nodes = [("n1", "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1", "127.0.0.1:7001"),
             ("n2", fresh_db[1], "127.0.0.1:7002")]
    cfg.write_text("".join(f'[[nodes]]\nname = "{n}"\ndsn = "{d}"\nproxy = "{p}"\n\n'
                           for n, d, p in nodes))
    r = CliRunner().invoke(app, ["explain", "INSERT INTO accounts (owner) VALUES ('a')",
                                 "--config", str(cfg), "--table", "accounts", "--json"])
    assert r.exit_code == 0, r.output
    (st,) = json.loads(r.output)["statements"]
    assert st["action"] == "replicate"
    assert st["rewritten"].startswith("INSERT INTO accounts (owner, created_at) VALUES ('a', '")
