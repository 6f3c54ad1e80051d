"""Consistency checks: do all nodes hold the same registered tables at the same log position?

A check is a control entry in the log (``replicate.command.check_tables``). Every node applies
it at the same slot and, inside that apply transaction, stores per table and per bucket of
primary-key hashes a row count and an order-independent hash (``replicate.check_results``).
So all nodes hash exactly the same logical state, without stopping writes.

``run_check`` submits the entry through a proxy, waits until every node applied it, compares
the buckets (``compare``, pure), and when buckets differ runs a second check limited to those
buckets, which records one hash per row, to name the keys of the rows that differ.

It also compares what every statement did on each node up to that slot (``replicate.outcomes``:
status, SQLSTATE, command tag), which no node rewrites once applied, so it is read directly.
Nodes that apply the same log to the same tables record the same outcomes; a slot where they
differ is where a divergence began (a statement one node ran and another could not: a trigger
or a function only one node has, or a PostgreSQL major version that lacks a syntax), and the
report names it with its statement.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from replicate.admin import param_text, submit
from replicate.command import Entry, check_tables
from replicate.config import ClusterConfig
from replicate.errors import NodeUnavailable, ReplicateError
from replicate.gate.catalog import TableName

MAX_ROWS_SHOWN = 20
OUTCOME_BUCKET = 4096    # slots per bucket when outcomes are compared
MAX_STATEMENT_SHOWN = 200

# What a slot did on a node, as compared: "ok INSERT 0 1", "error 23505", "duplicate", ...
_OUTCOME = "concat_ws(' ', status, sqlstate, command_tag)"
_OUTCOME_BUCKETS = (f"SELECT slot / {OUTCOME_BUCKET}, count(*), "
                    f"md5(string_agg(slot || '=' || {_OUTCOME}, ',' ORDER BY slot)) "
                    "FROM replicate.outcomes WHERE slot <= %s GROUP BY 1")
_OUTCOME_ROWS = (f"SELECT slot, {_OUTCOME} FROM replicate.outcomes "
                 f"WHERE slot <= %s AND slot / {OUTCOME_BUCKET} = ANY(%s)")

# node -> table -> bucket -> (rows, hash)
Buckets = dict[str, dict[str, dict[int, tuple[int, str]]]]


@dataclass
class TableReport:
    table: str
    rows: dict[str, int]                 # node -> row count
    digest: dict[str, str]               # node -> combined hash of its buckets
    differing_buckets: list[int] = field(default_factory=list)
    differing_rows: list[dict] = field(default_factory=list)   # {key, nodes: {node: hash|None}}

    @property
    def agree(self) -> bool:
        return not self.differing_buckets

    def to_json(self) -> dict:
        return {"table": self.table, "agree": self.agree, "rows": self.rows,
                "hash": self.digest, "differing_buckets": self.differing_buckets,
                "differing_rows": self.differing_rows}


@dataclass
class CheckReport:
    check_id: str
    slot: int | None
    tables: list[TableReport]
    unchecked: dict[str, str]            # node -> why it could not be checked
    # The outcomes of slots 1..slot as a pseudo-table keyed by slot: rows are outcomes,
    # differing_rows {key: slot, nodes: {node: outcome|None}, statement}.
    outcomes: TableReport | None = None

    @property
    def consistent(self) -> bool:
        return all(t.agree for t in self.tables) and (self.outcomes is None
                                                      or self.outcomes.agree)

    @property
    def exit_code(self) -> int:
        """0 consistent, 1 divergent, 2 could not check every node."""
        if not self.consistent:
            return 1
        return 2 if self.unchecked else 0

    def to_json(self) -> dict:
        return {"check_id": self.check_id, "slot": self.slot, "consistent": self.consistent,
                "exit_code": self.exit_code, "unchecked": self.unchecked,
                "tables": [t.to_json() for t in self.tables],
                "outcomes": None if self.outcomes is None else self.outcomes.to_json()}


def _combine(buckets: dict[int, tuple[int, str]]) -> str:
    return ":".join(f"{b}={n}/{h}" for b, (n, h) in sorted(buckets.items()))


def compare(results: Buckets, tables: list[str]) -> list[TableReport]:
    """Compare per-bucket counts and hashes of every node; pure."""
    reports = []
    for table in tables:
        per_node = {node: data.get(table, {}) for node, data in results.items()}
        all_buckets = sorted(set().union(*(b.keys() for b in per_node.values())))
        differing = [b for b in all_buckets
                     if len({per_node[n].get(b) for n in per_node}) > 1]
        digest = {n: hashlib.sha256(_combine(b).encode()).hexdigest()[:16]
                  for n, b in per_node.items()}
        rows = {n: sum(c for c, _ in b.values()) for n, b in per_node.items()}
        reports.append(TableReport(table, rows, digest, differing))
    return reports


def diff_rows(rows: dict[str, dict[str, str]], limit: int = MAX_ROWS_SHOWN) -> list[dict]:
    """Keys whose row hash is missing or different on some node; pure, bounded."""
    keys = sorted(set().union(*(r.keys() for r in rows.values())))
    out = []
    for key in keys:
        hashes = {node: r.get(key) for node, r in rows.items()}
        if len(set(hashes.values())) > 1:
            out.append({"key": key, "nodes": hashes})
            if len(out) >= limit:
                break
    return out


def _connect(dsn: str, timeout: float) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout)))


def registered_tables(config: ClusterConfig) -> list[str]:
    errors = []
    for node in config.nodes:
        try:
            with _connect(node.dsn, config.connect_timeout_s) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT table_name FROM replicate.registered_tables ORDER BY 1")]
        except psycopg.Error as exc:
            errors.append(f"{node.name}: {str(exc).strip().splitlines()[0]}")
    raise NodeUnavailable("no node of the cluster answered", detail="; ".join(errors))


def _submit_check(config: ClusterConfig, entry) -> int:
    """The slot of a check entry, submitted through the first proxy that answers."""
    _, outcome = submit(config, entry)
    if not outcome.ok:
        raise ReplicateError(f"the check failed: {outcome.message}",
                             sqlstate=outcome.sqlstate or "XX000")
    return outcome.slot


def _collect(config: ClusterConfig, slot: int, sql: str, params: list, timeout: float,
             unchecked: dict[str, str]) -> dict[str, list[tuple]]:
    """Wait until each node applied ``slot``, then run ``sql`` there; note nodes that can't."""
    out: dict[str, list[tuple]] = {}
    deadline = time.monotonic() + timeout
    for node in config.nodes:
        if node.name in unchecked:
            continue
        try:
            with _connect(node.dsn, config.connect_timeout_s) as conn:
                while True:
                    applied = conn.execute("SELECT slot FROM replicate.applied").fetchone()[0]
                    if applied >= slot:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"applied slot {applied}, check at slot {slot}")
                    time.sleep(0.05)
                out[node.name] = conn.execute(sql, params).fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            unchecked[node.name] = str(exc).strip().splitlines()[0]
    return out


def run_check(config: ClusterConfig, table: str | None = None, *,
              wait_s: float = 30.0) -> CheckReport:
    """Check ``table`` (or every registered table) on every node at one log position."""
    registered = registered_tables(config)
    if table is not None:
        by_name = {TableName.parse(name): name for name in registered}
        wanted = by_name.get(TableName.parse(table))
        if wanted is None:
            raise ReplicateError(f"table {table} is not registered", sqlstate="42P01",
                                 hint="registered tables: " + (", ".join(registered) or "none"))
        tables = [wanted]
    else:
        tables = registered
    check_id = uuid.uuid4().hex[:12]
    if not tables:
        return CheckReport(check_id, None, [], {})
    slot = _submit_check(config, check_tables(check_id, tables))
    unchecked: dict[str, str] = {}
    rows = _collect(config, slot, "SELECT table_name, bucket, row_count, hash FROM "
                    "replicate.check_results WHERE check_id = %s", [check_id], wait_s, unchecked)
    results: Buckets = {node: {} for node in rows}
    for node, found in rows.items():
        for name, bucket, count, digest in found:
            results[node].setdefault(name, {})[bucket] = (count, digest)
    reports = compare(results, tables)
    narrow = [r for r in reports if r.differing_buckets]
    for report in narrow:
        second = uuid.uuid4().hex[:12]
        slot2 = _submit_check(config, check_tables(second, [report.table],
                                                   report.differing_buckets))
        found = _collect(config, slot2, "SELECT row_key, row_hash FROM replicate.check_rows "
                         "WHERE check_id = %s", [second], wait_s, unchecked)
        report.differing_rows = diff_rows({n: dict(r) for n, r in found.items()})
    return CheckReport(check_id, slot, reports, unchecked,
                       compare_outcomes(config, slot, wait_s, unchecked))


def compare_outcomes(config: ClusterConfig, upto: int, wait_s: float,
                     unchecked: dict[str, str]) -> TableReport:
    """Compare the outcomes of slots 1..``upto`` on every node: per bucket of slots first,
    then slot by slot in the buckets that differ, each named with its statement."""
    found = _collect(config, upto, _OUTCOME_BUCKETS, [upto], wait_s, unchecked)
    results: Buckets = {node: {"outcomes": {int(b): (int(n), h) for b, n, h in rows}}
                        for node, rows in found.items()}
    [report] = compare(results, ["outcomes"])
    if report.differing_buckets:
        rows = _collect(config, upto, _OUTCOME_ROWS, [upto, report.differing_buckets], wait_s,
                        unchecked)
        report.differing_rows = diff_rows({n: dict(r) for n, r in rows.items()})
        statements = _statements(config, [row["key"] for row in report.differing_rows],
                                 [n for n in rows])
        for row in report.differing_rows:
            row["statement"] = statements.get(row["key"])
    return report


def _statement(entry: Entry) -> str:
    """An entry as one line: its SQL and, if any, its parameters as the client sent them
    (as `replicate log --slot` shows them, quoted), at most ``MAX_STATEMENT_SHOWN`` characters."""
    text = " ".join(entry.sql.split())
    if entry.params:
        shown = []
        for number, p in enumerate(entry.params, start=1):
            value = param_text(p.value, p.type_oid, p.binary)
            shown.append(f"${number}=" + ("NULL" if value is None
                                          else "'" + value.replace("'", "''") + "'"))
        text += f"  [{', '.join(shown)}]"
    return text if len(text) <= MAX_STATEMENT_SHOWN else text[:MAX_STATEMENT_SHOWN - 3] + "..."


def _statements(config: ClusterConfig, slots: list[int], nodes: list[str]) -> dict[int, str]:
    """The statements at ``slots``, from the log of the first of ``nodes`` that answers."""
    for node in config.nodes:
        if node.name not in nodes:
            continue
        try:
            with _connect(node.dsn, config.connect_timeout_s) as conn:
                found = conn.execute("SELECT slot, payload FROM replicate.log "
                                     "WHERE slot = ANY(%s)", [slots]).fetchall()
        except psycopg.Error:
            continue
        out = {}
        for slot, payload in found:
            try:
                out[slot] = _statement(Entry.decode(bytes(payload)))
            except ValueError as exc:
                out[slot] = f"({exc})"
        return out
    return {}
