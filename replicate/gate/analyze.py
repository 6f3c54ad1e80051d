"""Walk one statement's parse tree and collect the facts the gate decides on.

Theory of operation
-------------------
pglast (PostgreSQL's own parser, libpg_query) turns the client's text into a JSON parse
tree whose ``location`` fields are byte offsets into the UTF-8 text. :class:`Analyzer`
walks that tree once, keeping two pieces of scope:

- ``ctes``: the WITH names visible here (an unqualified name that is a CTE is no table);
- ``once``: whether an expression here runs exactly once per statement (the items of an
  ``INSERT ... VALUES`` row, and ``ON CONFLICT``/``RETURNING`` of a one-row VALUES) or
  possibly per row (everything else).

It records facts, not decisions: which relations are written and read (resolved through
the search_path as PostgreSQL would), every call of a time function, of a random function,
of a node-dependent or volatile function, every LIMIT without a total order, and so on.
:mod:`replicate.gate.classify` turns the facts into a decision, because most facts matter
only when the statement turns out to write a registered table.

A *site* is a place in the text to rewrite: a byte range and what goes there. Sites are
resolved to exact byte ranges with PostgreSQL's own scanner (``pglast.parser.scan``), only
for statements that need a rewrite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from pglast import parser as pg

from replicate.gate._builtins import (PG_CATALOG_FUNCTIONS, PG_CATALOG_SETOF,
                                      PG_CATALOG_VOLATILE)
from replicate.gate.catalog import (REPLICATED_SETTINGS, Catalog, TableInfo, TableName,
                                    Volatility, split_qualified_name)
from replicate.gate.refusals import GateRefusal

#: Functions constant within a statement: replaced by one literal per statement.
STATEMENT_TIME_FUNCTIONS: frozenset[str] = frozenset(
    {"now", "transaction_timestamp", "statement_timestamp"})

#: SQLValueFunction operators that read the transaction clock.
TIME_SVF: frozenset[str] = frozenset({
    "SVFOP_CURRENT_DATE", "SVFOP_CURRENT_TIME", "SVFOP_CURRENT_TIME_N",
    "SVFOP_CURRENT_TIMESTAMP", "SVFOP_CURRENT_TIMESTAMP_N", "SVFOP_LOCALTIME",
    "SVFOP_LOCALTIME_N", "SVFOP_LOCALTIMESTAMP", "SVFOP_LOCALTIMESTAMP_N"})

#: Volatile functions the gate can replace by a literal where they run once (uuidv4() and
#: uuidv7() without arguments: PostgreSQL 18).
ONCE_FUNCTIONS: frozenset[str] = frozenset(
    {"random", "gen_random_uuid", "uuidv4", "uuidv7", "clock_timestamp"})

#: Extension functions the gate can also replace where they run once (uuid-ossp's v4 is a
#: random UUID like gen_random_uuid()), mapped to the built-in that makes the literal.
EXTENSION_ONCE_FUNCTIONS: dict[str, str] = {"uuid_generate_v4": "gen_random_uuid"}

#: Built-in functions whose value depends on the node or the session, not on the data.
NODE_DEPENDENT: frozenset[str] = frozenset({
    "pg_backend_pid", "inet_client_addr", "inet_client_port", "inet_server_addr",
    "inet_server_port", "pg_postmaster_start_time", "pg_conf_load_time", "version",
    "current_database", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
    "txid_current", "txid_current_if_assigned", "txid_current_snapshot",
    "pg_current_snapshot", "pg_my_temp_schema", "pg_is_other_temp_schema",
    "pg_listening_channels", "pg_relation_filenode", "pg_relation_filepath",
    "pg_tablespace_location", "pg_config", "pg_get_replication_slots", "pg_cursor",
    "pg_prepared_statement", "pg_show_all_settings", "pg_available_extensions",
    "pg_available_extension_versions", "pg_tablespace_databases", "age", "mxid_age",
    "pg_column_compression", "pg_client_encoding", "timeofday", "pg_is_in_recovery",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
    "pg_xact_commit_timestamp", "txid_status", "pg_xact_status", "pg_relation_size",
    "pg_table_size", "pg_total_relation_size", "pg_indexes_size", "pg_database_size",
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "table_to_xml",
    "table_to_xmlschema", "table_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "pg_trigger_depth",
})

#: Sequence functions: deterministic under ordered apply for sequences of registered tables.
SEQUENCE_WRITERS: frozenset[str] = frozenset({"nextval", "setval"})
SESSION_SEQUENCE_READERS: frozenset[str] = frozenset({"currval", "lastval"})

#: Aggregates and window functions whose result depends on the order rows arrive in.
ORDER_SENSITIVE_AGGREGATES: frozenset[str] = frozenset({
    "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_agg_strict",
    "jsonb_agg_strict", "json_object_agg", "jsonb_object_agg", "xmlagg"})
ORDER_SENSITIVE_WINDOWS: frozenset[str] = frozenset({
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
    "lead", "first_value", "last_value", "nth_value"})

#: System columns: physical row places and transaction ids, different on every node.
SYSTEM_COLUMNS: frozenset[str] = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})

#: Date/time input strings that read the node's clock when cast.
CLOCK_WORDS: frozenset[str] = frozenset({"now", "today", "tomorrow", "yesterday"})
TEXT_TYPES: frozenset[str] = frozenset(
    {"text", "varchar", "bpchar", "char", "name", "character varying", "character",
     "citext", "json", "jsonb", "xml", "bytea"})

#: Statements without any effect on table data: always relayed.
UTILITY_RELAY: frozenset[str] = frozenset({
    "VariableSetStmt", "VariableShowStmt", "TransactionStmt", "ListenStmt",
    "UnlistenStmt", "NotifyStmt", "DiscardStmt", "DeallocateStmt", "CheckPointStmt",
    "ExecuteStmt", "LoadStmt", "ConstraintsSetStmt", "ClosePortalStmt", "FetchStmt",
    "VacuumStmt", "ReindexStmt", "ClusterStmt", "RefreshMatViewStmt"})


@dataclass(slots=True)
class Site:
    """A place in the statement to rewrite. ``kind`` says what goes there:

    - ``time``: a statement-constant clock function; ``arg`` = (op, typmod);
    - ``once``: a volatile function that runs once; ``arg`` = function name;
    - ``default``: a DEFAULT keyword (or a missing value) to materialise; ``arg`` = column;
    - ``append-column``/``append-value``/``default-values``: column-list, row and
      ``DEFAULT VALUES`` edits that materialise columns left to their defaults.
    """

    loc: int  # byte offset where the site starts (a token start)
    kind: str
    arg: Any = None


@dataclass(slots=True)
class Analysis:
    """The facts about one statement. Tables are split into registered and others."""

    root: str
    writes: set[TableName] = field(default_factory=set)
    reads: set[TableName] = field(default_factory=set)
    other_writes: set[TableName] = field(default_factory=set)
    other_reads: set[TableName] = field(default_factory=set)
    sequence_writes: set[TableName] = field(default_factory=set)
    sites: list[Site] = field(default_factory=list)
    #: refusals that apply when the statement writes a registered table
    write_problems: list[GateRefusal] = field(default_factory=list)
    #: refusals that apply whenever the statement touches a registered table
    problems: list[GateRefusal] = field(default_factory=list)
    locking: bool = False
    copy_in: bool = False
    #: DEFAULT keywords seen, and those matched to a column (the rest fail closed)
    defaults_seen: set[int] = field(default_factory=set)
    defaults_ok: set[int] = field(default_factory=set)
    #: a fixed decision for utility statements: "relay", or a GateRefusal
    verdict: Any = None


def _unwrap(node: dict) -> tuple[str, Any]:
    (k, v), = node.items()
    return k, v


def _strings(names: list) -> list[str]:
    return [n["String"]["sval"] for n in names if "String" in n]


def _func_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "FuncCall":
                yield v["funcname"][-1]["String"]["sval"]
                if len(v["funcname"]) > 1 and v["funcname"][-2]["String"]["sval"] != "pg_catalog":
                    yield "?user"
            if isinstance(v, (dict, list)):
                yield from _func_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from _func_names(v)


def _single_row(s: dict) -> bool:
    """Does this SELECT yield exactly one row, evaluating its list once? (No FROM, no
    grouping, no set operation, no set-returning or user function in it.)"""
    if any(s.get(k) for k in ("fromClause", "groupClause", "havingClause", "windowClause",
                              "larg", "rarg", "valuesLists", "whereClause")):
        return False
    targets = s.get("targetList")
    if '"ColumnRef"' in json.dumps(targets):  # may be correlated: runs per outer row
        return False
    return all(n in PG_CATALOG_FUNCTIONS and n not in PG_CATALOG_SETOF
               for n in _func_names(targets))


def _given(node: Any) -> bool:
    """A LIMIT/OFFSET clause that is there and not ``ALL``/``NULL``."""
    return node is not None and not node.get("A_Const", {}).get("isnull", False)


def _select_width(sel: dict) -> int:
    """How many columns an INSERT's SELECT yields, or 0 when the gate cannot tell (``*``)."""
    s = sel.get("SelectStmt", {})
    while s.get("larg"):
        s = s["larg"]
    targets = s.get("targetList") or []
    if any("A_Star" in f for t in targets
           for f in t["ResTarget"].get("val", {}).get("ColumnRef", {}).get("fields", [])):
        return 0
    return len(targets)


def _resolve_path(search_path: tuple[str, ...]) -> tuple[str, ...]:
    """The schemas PostgreSQL searches for a function: pg_catalog first unless listed."""
    path = tuple(s for s in search_path if s != "$user")
    return path if "pg_catalog" in path else ("pg_catalog",) + path


class Analyzer:
    """Collects :class:`Analysis` facts for one statement. One instance per statement."""

    def __init__(self, catalog: Catalog, search_path: tuple[str, ...], root: str,
                 functions: Mapping[tuple[str, str], Volatility] | None = None,
                 sequences: Mapping[TableName, TableName] | None = None,
                 resolved: Mapping[str, str | None] | None = None) -> None:
        self.catalog = catalog
        self.resolved = resolved or {}
        self.search_path = tuple(s for s in search_path if s != "$user")
        self.functions = catalog.functions if functions is None else functions
        self.sequences = catalog.sequences if sequences is None else sequences
        self.a = Analysis(root)

    # -- names -------------------------------------------------------------------
    def resolve_relation(self, rv: dict) -> TableName:
        """Resolve a RangeVar as PostgreSQL would: qualified as written, else the first
        schema on the search_path that holds a relation of that name."""
        name = rv["relname"]
        if "schemaname" in rv:
            return TableName(rv["schemaname"], name)
        schema = self.resolved.get(name)
        if schema is not None:  # as the session resolved it (see classify's ``resolved``)
            return TableName(schema, name)
        for schema in self.search_path:
            t = TableName(schema, name)
            if t in self.catalog.tables or t in self.catalog.relations or t in self.sequences:
                return t
        # Not found anywhere: PostgreSQL will raise 42P01; report it under the first schema.
        return TableName(self.search_path[0] if self.search_path else "public", name)

    def resolve_sequence(self, text: str) -> TableName | None:
        try:
            parts = split_qualified_name(text)
        except ValueError:
            return None
        if len(parts) == 2:
            return TableName(parts[0], parts[1])
        if len(parts) != 1:
            return None
        for schema in self.search_path:
            t = TableName(schema, parts[0])
            if t in self.sequences or t in self.catalog.relations:
                return t
        return TableName(self.search_path[0] if self.search_path else "public", parts[0])

    def function_volatility(self, names: list[str]) -> tuple[str | None, Volatility | None]:
        """(schema, volatility) of a function name, or (None, None) if unknown."""
        if len(names) >= 2:
            schema, fname = names[-2], names[-1]
            if schema == "pg_catalog" and fname in PG_CATALOG_FUNCTIONS:
                return schema, "v" if fname in PG_CATALOG_VOLATILE else "s"
            return (schema, self.functions.get((schema, fname)))
        fname = names[0]
        for schema in _resolve_path(self.search_path):
            if schema == "pg_catalog" and fname in PG_CATALOG_FUNCTIONS:
                return schema, "v" if fname in PG_CATALOG_VOLATILE else "s"
            vol = self.functions.get((schema, fname))
            if vol is not None:
                return schema, vol
        return None, None

    def relation(self, rv: dict, mode: str, ctes: frozenset[str]) -> TableName | None:
        if "schemaname" not in rv and rv["relname"] in ctes:
            return None
        t = self.resolve_relation(rv)
        registered = t in self.catalog.tables
        if mode == "write":
            (self.a.writes if registered else self.a.other_writes).add(t)
        else:
            (self.a.reads if registered else self.a.other_reads).add(t)
        return t

    # -- walking -----------------------------------------------------------------
    def walk(self, node: Any, ctes: frozenset[str], once: bool) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes, once)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            (k, v), = node.items()
            if k[0].isupper():
                handler = getattr(self, "v_" + k, None)
                if handler is not None:
                    handler(v, ctes, once)
                elif isinstance(v, (dict, list)):
                    self.walk(v, ctes, once)
                return
        for v in node.values():
            if isinstance(v, (dict, list)):
                self.walk(v, ctes, once)

    def with_clause(self, body: dict, ctes: frozenset[str], once: bool) -> frozenset[str]:
        w = body.get("withClause")
        if not w:
            return ctes
        items = [c["CommonTableExpr"] for c in w["ctes"]]
        names = [c["ctename"] for c in items]
        if w.get("recursive"):
            inner = ctes | frozenset(names)
            for c in items:
                self.walk(c["ctequery"], inner, False)
        else:
            seen = ctes
            for c in items:
                self.walk(c["ctequery"], seen, False)
                seen = seen | {c["ctename"]}
        return ctes | frozenset(names)

    def v_RangeVar(self, rv: dict, ctes: frozenset[str], once: bool) -> None:
        self.relation(rv, "read", ctes)

    def v_SelectStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        ctes = self.with_clause(s, ctes, once)
        if s.get("intoClause"):
            self.new_table(s["intoClause"]["rel"])
        if s.get("lockingClause"):
            self.a.locking = True
        for key in ("larg", "rarg"):
            if s.get(key):
                self.v_SelectStmt(s[key], ctes, False)
        single = _single_row(s)
        for key, v in s.items():
            if key in ("withClause", "intoClause", "larg", "rarg"):
                continue
            if isinstance(v, (dict, list)):
                self.walk(v, ctes, once if key == "valuesLists" else single)
        limited = (_given(s.get("limitCount")) or _given(s.get("limitOffset")))
        distinct_on = any(d for d in s.get("distinctClause") or [])
        if limited or distinct_on:
            with_ties = s.get("limitOption") == "LIMIT_OPTION_WITH_TIES"
            if not (with_ties or self.total_order(s, ctes)):
                what = "LIMIT/OFFSET" if limited else "DISTINCT ON"
                self.a.write_problems.append(GateRefusal(
                    "limit-order",
                    f"{what} without an ORDER BY over a unique key picks different rows "
                    "on different nodes"))

    def total_order(self, s: dict, ctes: frozenset[str]) -> bool:
        """Does the SELECT's ORDER BY cover a unique key of its single registered table?"""
        sort = s.get("sortClause") or []
        frm = s.get("fromClause") or []
        if not sort or len(frm) != 1 or "RangeVar" not in frm[0]:
            return False
        rv = frm[0]["RangeVar"]
        if "schemaname" not in rv and rv["relname"] in ctes:
            return False
        info: TableInfo | None = self.catalog.tables.get(self.resolve_relation(rv))
        if info is None:
            return False
        cols = set()
        for item in sort:
            node = item["SortBy"]["node"]
            if "ColumnRef" in node:
                fields = node["ColumnRef"]["fields"]
                if "String" in fields[-1]:
                    cols.add(fields[-1]["String"]["sval"])
        return any(key <= cols for key in info.unique_keys)

    def v_InsertStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        ctes = self.with_clause(s, ctes, once)
        target = self.relation(s["relation"], "write", frozenset())
        sel = s.get("selectStmt")
        values = None
        if sel and "SelectStmt" in sel and sel["SelectStmt"].get("valuesLists") \
                and not sel["SelectStmt"].get("withClause"):
            values = [row["List"]["items"] for row in sel["SelectStmt"]["valuesLists"]]
            for row in values:
                self.walk(row, ctes, True)
        elif sel:
            self.walk(sel, ctes, False)
        single = values is not None and len(values) == 1
        for key in ("onConflictClause", "returningClause"):
            if s.get(key):
                self.walk(s[key], ctes | {"excluded"}, single)
        if target is not None and target in self.catalog.tables:
            info = self.catalog.tables[target]
            self.insert_defaults(s, info, values)
            conflict = s.get("onConflictClause") or {}
            self.assigned_defaults(info, conflict.get("targetList"), single)

    def set_default(self, info: TableInfo, name: str, loc: int, once: bool) -> None:
        """A DEFAULT keyword for column ``name``: fine, or materialised at ``loc``."""
        self.a.defaults_ok.add(loc)
        col = info.column(name)
        if col is not None and col.volatile_default:
            self.a.sites.append(Site(loc, "default" if once else "default-per-row", col))

    def assigned_defaults(self, info: TableInfo, targets: list | None, once: bool) -> None:
        """``SET col = DEFAULT`` in UPDATE, ON CONFLICT DO UPDATE and MERGE UPDATE."""
        for t in targets or []:
            rt = t["ResTarget"]
            if "SetToDefault" in rt.get("val", {}):
                self.set_default(info, rt["name"], rt["val"]["SetToDefault"]["location"], once)

    def v_SetToDefault(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        self.a.defaults_seen.add(s["location"])

    def insert_defaults(self, s: dict, info: TableInfo, values: list | None) -> None:
        """Materialise (or refuse) columns that get a non-deterministic default."""
        if not info.columns:
            return
        cols = [c["ResTarget"]["name"] for c in s.get("cols") or []]
        sel = s.get("selectStmt")
        if sel is None:  # DEFAULT VALUES
            if any(c.volatile_default for c in info.columns):
                self.a.sites.append(Site(s["relation"]["location"], "default-values", info))
            return
        if not cols:
            width = len(values[0]) if values else _select_width(sel)
            cols = [c.name for c in info.columns[:width]]
            explicit_list = False
        else:
            explicit_list = True
        if values is not None:
            for row in values:
                for name, item in zip(cols, row):
                    if "SetToDefault" in item:
                        self.set_default(info, name, item["SetToDefault"]["location"], True)
        missing = [c for c in info.columns if c.name not in cols]
        volatile_missing = [c for c in missing if c.volatile_default]
        if volatile_missing:
            if values is None:
                self.a.write_problems.append(GateRefusal(
                    "volatile-default",
                    f"INSERT ... SELECT leaves column {volatile_missing[0].name!r} of "
                    f"{info.name} to its default {volatile_missing[0].default}, which "
                    "differs between nodes"))
            else:
                # Columns to add, in table order, up to the last volatile one; the ones in
                # between (positional VALUES) get the DEFAULT keyword.
                if explicit_list:
                    add = volatile_missing
                else:
                    last = info.columns.index(volatile_missing[-1])
                    add = [c for c in info.columns[len(cols):last + 1]]
                self.a.sites.append(Site(s["relation"]["location"], "append",
                                         (explicit_list, tuple(add), len(values))))
        if values is None and any(c.sequence_default for c in missing):
            sel_body = sel.get("SelectStmt", {})
            if not (_single_row(sel_body) or self.total_order(sel_body, frozenset())):
                self.a.write_problems.append(GateRefusal(
                    "limit-order",
                    f"INSERT ... SELECT numbers rows of {info.name} from a sequence in the "
                    "order the SELECT returns them, which differs between nodes",
                    hint="Add an ORDER BY over a unique key to the SELECT, or give the "
                         "serial/identity column explicitly."))

    def v_UpdateStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        ctes = self.with_clause(s, ctes, once)
        target = self.relation(s["relation"], "write", frozenset())
        for key, v in s.items():
            if key not in ("relation", "withClause") and isinstance(v, (dict, list)):
                self.walk(v, ctes, False)
        if target in self.catalog.tables:
            self.assigned_defaults(self.catalog.tables[target], s.get("targetList"), False)

    def v_DeleteStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        ctes = self.with_clause(s, ctes, once)
        self.relation(s["relation"], "write", frozenset())
        for key, v in s.items():
            if key not in ("relation", "withClause") and isinstance(v, (dict, list)):
                self.walk(v, ctes, False)

    def v_MergeStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        ctes = self.with_clause(s, ctes, once)
        target = self.relation(s["relation"], "write", frozenset())
        for key, v in s.items():
            if key not in ("relation", "withClause") and isinstance(v, (dict, list)):
                self.walk(v, ctes, False)
        if target in self.catalog.tables:
            info = self.catalog.tables[target]
            for w in s.get("mergeWhenClauses") or []:
                w = w["MergeWhenClause"]
                if w.get("commandType") == "CMD_UPDATE":
                    self.assigned_defaults(info, w.get("targetList"), False)
                if w.get("commandType") != "CMD_INSERT":
                    continue
                names = [t["ResTarget"]["name"] for t in w.get("targetList") or []]
                if not names:
                    names = [c.name for c in info.columns[:len(w.get("values") or [])]]
                given = set(names)
                for name, item in zip(names, w.get("values") or []):
                    if "SetToDefault" in item:
                        self.set_default(info, name, item["SetToDefault"]["location"], False)
                for c in info.columns:
                    if c.volatile_default and c.name not in given:
                        self.a.write_problems.append(GateRefusal(
                            "volatile-default",
                            f"MERGE ... INSERT leaves column {c.name!r} to its default "
                            f"{c.default}, which differs between nodes"))
                        break

    def v_ColumnRef(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        last = s["fields"][-1]
        if "String" in last and last["String"]["sval"] in SYSTEM_COLUMNS:
            self.a.write_problems.append(GateRefusal(
                "node-dependent",
                f"system column {last['String']['sval']} is physical and differs between "
                "nodes", hint="Identify rows by their key columns instead."))

    def v_RangeTableSample(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        self.a.write_problems.append(GateRefusal(
            "limit-order", "TABLESAMPLE picks rows by their physical place, which differs "
                           "between nodes",
            hint="Select the rows by key, e.g. WHERE id % 10 = 0."))
        self.walk(s.get("relation"), ctes, once)
        self.walk(s.get("args"), ctes, once)
        self.walk(s.get("repeatable"), ctes, once)

    def v_SubLink(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        for key, v in s.items():
            if isinstance(v, (dict, list)):
                self.walk(v, ctes, False)

    def v_TypeCast(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        arg = s.get("arg", {})
        names = _strings(s["typeName"]["names"])
        if "A_Const" in arg and names and names[-1] in TEXT_TYPES:
            return  # 'today'::text is just a word
        self.walk(arg, ctes, once)

    def v_A_Const(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        sval = s.get("sval")
        if sval and sval.get("sval", "").strip().lower() in CLOCK_WORDS:
            self.a.write_problems.append(GateRefusal(
                "clock-literal",
                f"the date/time input {sval['sval']!r} reads each node's own clock"))

    def v_SQLValueFunction(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        op = s["op"]
        if op in TIME_SVF:
            self.a.sites.append(Site(s["location"], "time", (op, s.get("typmod", -1))))
        elif op == "SVFOP_CURRENT_CATALOG":
            self.a.write_problems.append(GateRefusal(
                "node-dependent", "current_catalog (the database name) may differ between nodes"))

    def v_FuncCall(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        names = _strings(s["funcname"])
        fname = names[-1]
        schema, vol = self.function_volatility(names)
        loc = s["location"]
        args = s.get("args") or []
        if (schema == "pg_catalog" and fname in ONCE_FUNCTIONS and not args) or \
                (schema is not None and vol is not None and fname in EXTENSION_ONCE_FUNCTIONS
                 and not args):
            if once:
                self.a.sites.append(Site(loc, "once", EXTENSION_ONCE_FUNCTIONS.get(fname, fname)))
            else:
                self.a.write_problems.append(GateRefusal(
                    "volatile-per-row",
                    f"{fname}() would run once per row here, with different values "
                    "on each node"))
        elif schema == "pg_catalog":
            if fname in STATEMENT_TIME_FUNCTIONS and not args:
                self.a.sites.append(Site(loc, "time", (fname, -1)))
            elif fname in SEQUENCE_WRITERS:
                self.sequence_call(fname, args, once)
            elif fname in SESSION_SEQUENCE_READERS:
                self.a.write_problems.append(GateRefusal(
                    "session-state", f"{fname}() reads this session's sequence state, "
                                     "which the other nodes do not have"))
            elif fname == "current_setting":
                self.setting_call(args)
            elif fname in NODE_DEPENDENT or fname.startswith("pg_stat_get_"):
                self.a.write_problems.append(GateRefusal(
                    "node-dependent", f"{fname}() returns a different value on each node"))
            elif vol == "v":
                self.a.write_problems.append(GateRefusal(
                    "volatile-function", f"{fname}() is volatile"))
        elif vol is None:
            self.a.write_problems.append(GateRefusal(
                "unknown-function",
                f"function {'.'.join(names)}() is not in the gate's catalog"))
        elif vol == "v":
            self.a.write_problems.append(GateRefusal(
                "volatile-function",
                f"function {schema}.{fname}() is VOLATILE: it may compute differently on "
                "each node"))
        if fname in ORDER_SENSITIVE_AGGREGATES and not s.get("agg_order") and not s.get("over"):
            self.a.write_problems.append(GateRefusal(
                "aggregate-order", f"{fname}() without ORDER BY depends on the scan order"))
        over = s.get("over")
        if over is not None and fname in ORDER_SENSITIVE_WINDOWS and not over.get("orderClause"):
            self.a.write_problems.append(GateRefusal(
                "aggregate-order",
                f"{fname}() OVER () without ORDER BY depends on the scan order"))
        for key, v in s.items():
            if key != "funcname" and isinstance(v, (dict, list)):
                self.walk(v, ctes, once)

    def sequence_call(self, fname: str, args: list, once: bool) -> None:
        text = None
        if args:
            a = args[0]
            if "TypeCast" in a:
                a = a["TypeCast"]["arg"]
            if "A_Const" in a and "sval" in a["A_Const"]:
                text = a["A_Const"]["sval"]["sval"]
        seq = self.resolve_sequence(text) if text is not None else None
        if seq is None or seq not in self.sequences:
            self.a.write_problems.append(GateRefusal(
                "unregistered-sequence",
                f"{fname}() of {'a computed name' if seq is None else str(seq)}: only "
                "sequences owned by registered tables advance the same on every node"))
            return
        self.a.sequence_writes.add(seq)
        if fname == "nextval" and not once:
            self.a.write_problems.append(GateRefusal(
                "volatile-per-row",
                f"nextval({text!r}) numbers rows in scan order here, which differs between "
                "nodes", hint="Use INSERT ... VALUES with one row per VALUES list, or an "
                              "ORDER BY over a unique key in INSERT ... SELECT."))

    def setting_call(self, args: list) -> None:
        name = None
        if args and "A_Const" in args[0] and "sval" in args[0]["A_Const"]:
            name = args[0]["A_Const"]["sval"]["sval"].lower()
        if name is None or name not in REPLICATED_SETTINGS:
            label = repr(name) if name else "a computed name"
            self.a.write_problems.append(GateRefusal(
                "node-dependent",
                f"current_setting({label}): only settings carried in the log entry "
                f"({', '.join(sorted(REPLICATED_SETTINGS))}) are the same on every node"))

    # -- roots -------------------------------------------------------------------
    def new_table(self, rv: dict) -> None:
        """SELECT INTO / CREATE TABLE AS: a new, unregistered, node-local table."""
        t = TableName(rv.get("schemaname") or (self.search_path[:1] or ("public",))[0],
                      rv["relname"])
        if t in self.catalog.tables:
            self.a.writes.add(t)
            self.a.problems.append(GateRefusal(
                "ddl", f"CREATE TABLE {t} would replace a registered table"))
        else:
            self.a.other_writes.add(t)

    def v_CreateTableAsStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        self.new_table(s["into"]["rel"])
        self.walk(s["query"], ctes, False)

    def v_CopyStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        if s.get("query"):
            self.walk(s["query"], ctes, False)
        rel = s.get("relation")
        if rel is None:
            return
        if not s.get("is_from"):
            self.relation(rel, "read", frozenset())
            return
        t = self.relation(rel, "write", frozenset())
        if s.get("whereClause"):
            self.walk(s["whereClause"], ctes, False)
        if t not in self.catalog.tables:
            return
        if s.get("filename") or s.get("is_program"):
            self.a.problems.append(GateRefusal(
                "server-file", "COPY FROM a server file or program reads each node's own file"))
            return
        self.a.copy_in = True
        info = self.catalog.tables[t]
        given = set(_strings(s.get("attlist") or [])) or {c.name for c in info.columns}
        for c in info.columns:
            if c.volatile_default and c.name not in given:
                self.a.write_problems.append(GateRefusal(
                    "volatile-default",
                    f"COPY leaves column {c.name!r} to its default {c.default}, which "
                    "differs between nodes", hint="List the column in COPY and send its "
                                                  "values with the data."))
                break

    def v_TruncateStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        for r in s["relations"]:
            self.relation(r["RangeVar"], "write", frozenset())

    def v_LockStmt(self, s: dict, ctes: frozenset[str], once: bool) -> None:
        for r in s["relations"]:
            self.relation(r["RangeVar"], "read", frozenset())
        self.a.locking = True


def parse(sql: str) -> list[dict]:
    """Parse with PostgreSQL's parser; raises ``pglast.parser.ParseError``."""
    return json.loads(pg.parse_sql_json(sql))["stmts"]


def expression_is_nondeterministic(expr: str, functions: Mapping[tuple[str, str], Volatility],
                                   sequences: Mapping[TableName, TableName]) -> bool:
    """Would ``expr`` (a column default) compute differently on two nodes when run once?"""
    try:
        stmts = parse("SELECT " + expr)
    except pg.ParseError:
        return True
    an = Analyzer(Catalog(functions=functions, sequences=sequences), ("public",), "SelectStmt")
    an.walk(default_expression(stmts), frozenset(), True)
    return bool(an.a.sites or an.a.write_problems)


def default_expression(stmts: list[dict]) -> dict:
    """The expression node of a parsed ``SELECT <expr>``."""
    return stmts[0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
