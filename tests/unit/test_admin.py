"""The pure parts of replicate.admin: schema comparison, status summary, log decoding."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from replicate.admin import (ColumnDef, Fingerprint, check_schemas, content_difference,
                             decode_entry, lint, param_text, schema_differences, summarize)
from replicate.command import CANONICAL_SETTINGS, Entry, Param, register_table
from replicate.config import ClusterConfig, NodeConfig
from replicate.errors import ReplicateError

ACCOUNTS = Fingerprint(
    "public", "accounts", "accounts", "r",
    (ColumnDef("id", "integer", True, None),
     ColumnDef("balance", "numeric(12,2)", True, "0"),
     ColumnDef("note", "text", False, None)),
    constraints=(("accounts_pkey", "PRIMARY KEY (id)"),),
    indexes=(("accounts_pkey",
              "CREATE UNIQUE INDEX accounts_pkey ON public.accounts USING btree (id)"),),
    primary_key=(("id", False),))


def with_column(fp: Fingerprint, index: int, **changes) -> Fingerprint:
    columns = list(fp.columns)
    columns[index] = replace(columns[index], **changes)
    return replace(fp, columns=tuple(columns))


@pytest.mark.parametrize("mine, expected", [
    (ACCOUNTS, []),
    (replace(ACCOUNTS, guarded=True, registered_since=7), []),  # not part of the schema
    (with_column(ACCOUNTS, 1, type="integer"),
     ["n3: column balance is integer, n1 has numeric(12,2)"]),
    (with_column(ACCOUNTS, 2, not_null=True),
     ["n3: column note is NOT NULL, n1 has nullable"]),
    (with_column(ACCOUNTS, 1, default="1"),
     ["n3: column balance has default 1, n1 has 0"]),
    (with_column(ACCOUNTS, 1, default=None),
     ["n3: column balance has default (none), n1 has 0"]),
    (replace(ACCOUNTS, columns=ACCOUNTS.columns[:2]),
     ["n3: column note is missing (n1 has it as text)"]),
    (replace(ACCOUNTS, columns=ACCOUNTS.columns + (ColumnDef("extra", "int", False, None),)),
     ["n3: has an extra column extra int, n1 has none"]),
    (replace(ACCOUNTS, columns=(ACCOUNTS.columns[1], ACCOUNTS.columns[0], ACCOUNTS.columns[2])),
     ["n3: columns are in the order balance, id, note, n1 has id, balance, note"]),
    (replace(ACCOUNTS, constraints=ACCOUNTS.constraints + (("pos", "CHECK ((balance > 0))"),)),
     ["n3: has an extra constraint pos (CHECK ((balance > 0))), n1 has none"]),
    (replace(ACCOUNTS, indexes=()),
     ["n3: index accounts_pkey is missing (n1 has CREATE UNIQUE INDEX accounts_pkey ON "
      "public.accounts USING btree (id))"]),
    (replace(ACCOUNTS, triggers=(("stamp", "CREATE TRIGGER stamp ..."),)),
     ["n3: has an extra trigger stamp (CREATE TRIGGER stamp ...), n1 has none"]),
    (replace(ACCOUNTS, kind="v"), ["n3: relation kind 'v', n1 has 'r'"]),
    (replace(ACCOUNTS, schema="other", qualified="other.accounts"),
     ["n3: the name resolves to other.accounts, on n1 to accounts"]),
    (replace(ACCOUNTS, primary_key=(("note", True),)),
     ["n3: primary key (note), n1 has (id)"]),
])
def test_schema_differences(mine: Fingerprint, expected: list[str]) -> None:
    assert schema_differences("n1", ACCOUNTS, "n3", mine) == expected


def test_check_schemas_names_the_node_and_every_difference() -> None:
    assert check_schemas("accounts", {"n1": ACCOUNTS, "n2": ACCOUNTS}) == ACCOUNTS
    skewed = with_column(with_column(ACCOUNTS, 1, type="integer"), 2, type="varchar")
    with pytest.raises(ReplicateError) as info:
        check_schemas("accounts", {"n1": ACCOUNTS, "n2": ACCOUNTS, "n3": skewed})
    assert info.value.sqlstate == "0A000"
    assert "n3: column balance is integer, n1 has numeric(12,2)" in info.value.message
    assert info.value.detail.splitlines() == ["n3: column balance is integer, n1 has numeric(12,2)",
                                              "n3: column note is varchar, n1 has text"]


def test_check_schemas_refuses_a_missing_table_a_view_and_a_table_without_key() -> None:
    with pytest.raises(ReplicateError) as info:
        check_schemas("accounts", {"n1": ACCOUNTS, "n2": None, "n3": None})
    assert info.value.sqlstate == "42P01" and "n2, n3" in info.value.message
    with pytest.raises(ReplicateError) as info:
        check_schemas("v", {"n1": replace(ACCOUNTS, kind="v")})
    assert info.value.sqlstate == "42809"
    with pytest.raises(ReplicateError) as info:
        check_schemas("accounts", {"n1": replace(ACCOUNTS, primary_key=())})
    assert info.value.sqlstate == "0A000" and "no primary key" in info.value.message


CONFIG = ClusterConfig(nodes=tuple(NodeConfig(f"n{i}", f"host=h{i} dbname=d", f"h{i}:6432")
                                   for i in (1, 2, 3)), name="c", path=Path("c.toml"))


def report(name: str, role: str, ballot: str, applied: int, commit: int | None = None,
           stalled: str | None = None, leader: str | None = "n1") -> dict:
    return {"node": name, "role": role, "leader": leader, "ballot": ballot,
            "commit_upto": commit, "delivered_upto": applied, "applied_upto": applied,
            "pending_apply": 0, "shed_slots": 7, "shed_pending": 3, "stalled": stalled,
            "acceptors": [{"node": n, "connected": role == "leader", "last_error": None,
                           "dropped": 0} for n in ("n1", "n2", "n3")]}


def test_summarize_healthy_stalled_and_down() -> None:
    status = summarize(CONFIG, [report("n1", "leader", "4.1", 10, commit=12),
                                report("n2", "follower", "4.1", 12, stalled=None),
                                "cannot reach the proxy"],
                       {"n3": ("up", None, 9)})
    assert (status.leader, status.ballot, status.commit_upto) == ("n1", "4.1", 12)
    n1, n2, n3 = status.nodes
    assert (n1.state, n1.role, n1.lag) == ("ok", "leader", 2)
    assert (n2.state, n2.lag) == ("ok", 0)
    assert (n3.state, n3.database, n3.applied_upto, n3.lag) == ("down", "up", 9, 3)
    assert n3.proxy_error == "cannot reach the proxy"
    assert status.reachable == 2
    assert status.to_dict()["nodes"][1]["shed_slots"] == 7   # dropped beyond apply_backlog
    assert status.to_dict()["nodes"][1]["shed_pending"] == 3
    assert status.to_dict()["nodes"][0]["acceptors"][0] == {"node": "n1", "connected": True,
                                                            "last_error": None}
    stalled = summarize(CONFIG, [report("n1", "leader", "4.1", 12, commit=12),
                                 report("n2", "follower", "4.1", 5, stalled="lock timeout"),
                                 report("n3", "follower", "4.1", 12)], {})
    assert (stalled.nodes[1].state, stalled.nodes[1].stalled, stalled.nodes[1].lag) == (
        "stalled", "lock timeout", 7)


def test_summarize_prefers_the_higher_ballot_and_survives_a_down_leader() -> None:
    two = summarize(CONFIG, [report("n1", "leader", "4.1", 3, commit=3),
                             report("n2", "leader", "5.2", 3, commit=4, leader="n2"),
                             report("n3", "follower", "5.2", 3, leader="n2")], {})
    assert (two.leader, two.ballot, two.commit_upto) == ("n2", "5.2", 4)
    headless = summarize(CONFIG, ["refused", report("n2", "follower", "4.1", 8),
                                  report("n3", "follower", "4.1", 6)],
                         {"n1": ("down", "connection refused", None)})
    assert (headless.leader, headless.ballot, headless.commit_upto) == ("n1", None, 8)
    assert [n.lag for n in headless.nodes] == [None, 0, 2]
    assert headless.nodes[0].database == "down"
    nothing = summarize(CONFIG, ["a", "b", "c"], {})
    assert (nothing.leader, nothing.commit_upto, nothing.reachable) == (None, None, 0)


@pytest.mark.parametrize("value, oid, binary, expected", [
    (None, 23, True, None),
    (b"abc", 0, False, "abc"),
    (struct.pack(">h", 3), 21, True, "3"),
    (struct.pack(">i", -7), 23, True, "-7"),
    (struct.pack(">q", 2**40), 20, True, str(2**40)),
    (b"\x01", 16, True, "true"),
    (struct.pack(">d", 1.5), 701, True, "1.5"),
    (b"txt", 25, True, "txt"),
    (b"\x00\xff", 17, True, "\\x00ff"),
    (b"\xff", 0, False, "\\xff"),
    (b"\x00\x01", 23, True, "\\x0001"),  # wrong length for int4: shown raw
])
def test_param_text(value, oid, binary, expected) -> None:
    assert param_text(value, oid, binary) == expected


def test_decode_entry() -> None:
    entry = Entry("INSERT INTO t VALUES ($1)", (Param(b"1"),), (("TimeZone", "Asia/Tokyo"),),
                  "app")
    assert decode_entry(entry.encode(), "ok", False) == (
        "statement", "INSERT INTO t VALUES ($1)", {})
    # every setting as the nodes applied it: the entry's, else the canonical value
    assert decode_entry(entry.encode(), "ok", True) == (
        "statement", "INSERT INTO t VALUES ($1)",
        {"params": ("1",), "settings": {**CANONICAL_SETTINGS, "TimeZone": "Asia/Tokyo"},
         "role": "app"})
    assert decode_entry(register_table("public.t").encode(), "control", False)[:2] == (
        "control", "REGISTER TABLE public.t")
    assert decode_entry(b"", "noop", False) == ("noop", None, {})
    assert decode_entry(None, "ok", False) == ("unknown", None, {})
    kind, text, _ = decode_entry(b"{", "ok", False)
    assert kind == "unknown" and "malformed" in text


def test_content_difference_names_row_counts_and_sequences() -> None:
    seq = [("public.t_id_seq", 5, True)]
    same = {"n1": (3, "aa", seq), "n2": (3, "aa", list(seq)), "n3": (3, "aa", seq)}
    assert content_difference("public.t", same) is None
    rows = {**same, "n2": (4, "bb", seq)}
    assert content_difference("public.t", rows) == (
        "table public.t holds different rows on different nodes: n1 has 3 rows (md5 aa), "
        "n2 has 4 rows (md5 bb), n3 has 3 rows (md5 aa)")
    moved = {**same, "n3": (3, "aa", [("public.t_id_seq", 7, True)])}
    assert content_difference("public.t", moved) == (
        "sequence public.t_id_seq of table public.t is at 7 on n3, at 5 on n1")
    fresh = {**same, "n2": (3, "aa", [("public.t_id_seq", 1, False)])}
    assert content_difference("public.t", fresh) == (
        "sequence public.t_id_seq of table public.t is unused (starts at 1) on n2, at 5 on n1")
    gone = {**same, "n2": (3, "aa", [])}
    assert content_difference("public.t", gone) == (
        "sequence public.t_id_seq of table public.t is missing on n2, at 5 on n1")


def test_lint_refuses_references_to_unregistered_tables_and_warns_about_the_rest() -> None:
    assert lint("public.t", []) == ([], [])
    refusals, warnings = lint("public.t", [
        ("references", "t_p_fkey", "p"),
        ("referenced-by", "c_t_fkey", "c"),
        ("volatile-trigger", "stamp", "stamp()")])
    assert refusals == ["foreign key t_p_fkey of public.t references p, which is not registered: "
                        "its check could pass on one node and fail on another"]
    assert [w.split(":")[0] for w in warnings] == [
        "foreign key c_t_fkey of the unregistered table c references public.t",
        "trigger stamp calls the volatile function stamp()"]
