"""The catalog snapshot the gate decides with, and the loader that reads it from a node.

The gate is pure: it never asks a database anything while it classifies. What it needs to
know about the database comes in as one frozen :class:`Catalog` value, loaded once (and
reloaded when the registered tables or their schemas change) by :func:`load_catalog`.

Names are :class:`TableName` pairs ``(schema, name)`` exactly as stored in ``pg_class`` —
already case-folded or quoted as PostgreSQL keeps them (``public.accounts``,
``public."Orders"`` is ``TableName("public", "Orders")``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Literal, Mapping, NamedTuple

Volatility = Literal["i", "s", "v"]  # pg_proc.provolatile: immutable, stable, volatile

#: Settings that every log entry carries (DESIGN.md, "Multi-Paxos, as we run it"), so
#: ``current_setting()`` of one of these gives the same answer on every node.
REPLICATED_SETTINGS: frozenset[str] = frozenset({
    "search_path", "timezone", "datestyle", "intervalstyle", "extra_float_digits",
    "bytea_output", "standard_conforming_strings",
})


class TableName(NamedTuple):
    """A schema-qualified relation name, as PostgreSQL stores it (no quotes, exact case)."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> "TableName":
        """Parse ``name``, ``schema.name`` or quoted forms the way PostgreSQL reads them.

        >>> TableName.parse('Accounts')
        TableName(schema='public', name='accounts')
        >>> TableName.parse('"App"."Orders"')
        TableName(schema='App', name='Orders')
        """
        parts = split_qualified_name(text)
        if len(parts) == 1:
            return cls(default_schema, parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ValueError(f"not a table name: {text!r}")


def quote_ident(name: str) -> str:
    """Quote an identifier only when PostgreSQL needs it (close to ``quote_ident()``)."""
    if name and (name[0].isalpha() and name[0].isascii() or name[0] == "_") and all(
        (c.isascii() and (c.islower() or c.isdigit())) or c == "_" for c in name
    ):
        return name
    return '"' + name.replace('"', '""') + '"'


def split_qualified_name(text: str) -> list[str]:
    """Split ``a."B".c`` into identifiers, folding unquoted ones to lower case (ASCII only,
    as PostgreSQL does in a UTF8 database). Raises ValueError on malformed input."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j = i + 1
            buf = []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted identifier in {text!r}")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            ident = "".join(buf)
        else:
            j = i
            while j < n and text[j] not in '." \t\n':
                j += 1
            ident = "".join(c.lower() if c.isascii() else c for c in text[i:j])
            i = j
        if not ident:
            raise ValueError(f"empty identifier in {text!r}")
        parts.append(ident)
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return parts
        if text[i] != ".":
            raise ValueError(f"unexpected {text[i]!r} in name {text!r}")
        i += 1


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a registered table.

    ``default`` is the default expression as ``pg_get_expr`` prints it (None: no default,
    or an identity/generated column, which PostgreSQL computes deterministically).
    ``volatile_default`` is True when that expression would compute differently on two
    nodes (it calls a volatile function other than ``nextval`` of an owned sequence, or a
    time function); the gate then materialises or refuses it. ``sequence_default`` marks
    serial and identity columns: deterministic as long as rows arrive in a fixed order.
    """

    name: str
    default: str | None = None
    volatile_default: bool = False
    sequence_default: bool = False  # serial/identity: numbered in the order rows arrive


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A registered table: its columns in ``attnum`` order and its total-order keys.

    ``unique_keys`` lists the column sets (primary key, unique constraints/indexes whose
    columns are all NOT NULL and that are not partial) that identify a row: an
    ``ORDER BY`` covering one of them fixes the rows a ``LIMIT`` picks.
    """

    name: TableName
    columns: tuple[ColumnInfo, ...] = ()
    unique_keys: tuple[frozenset[str], ...] = ()

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Everything the gate knows about the database, frozen.

    - ``tables``: the registered tables.
    - ``relations``: other relations that exist (for search_path resolution: an
      unregistered ``app.accounts`` earlier on the path hides ``public.accounts``).
    - ``functions``: volatility of user functions by (schema, name); the most volatile
      overload wins. Functions of ``pg_catalog`` are known built in.
    - ``sequences``: sequences owned by registered tables -> owning table.
    - ``node_local_settings``: settings whose value may differ between nodes (everything
      in ``pg_settings`` that a log entry does not carry); informational, since
      ``current_setting()`` in a write is allowed only for :data:`REPLICATED_SETTINGS`.
    - ``triggers``: per registered table, its user triggers whose function is VOLATILE
      (outside schema ``replicate``). They run on every node at apply time, where a clock
      or random call diverges, so writes to such tables are refused; declaring the trigger
      function STABLE or IMMUTABLE is the user's promise that it is deterministic.
    """

    tables: Mapping[TableName, TableInfo] = field(default_factory=dict)
    relations: frozenset[TableName] = frozenset()
    functions: Mapping[tuple[str, str], Volatility] = field(default_factory=dict)
    sequences: Mapping[TableName, TableName] = field(default_factory=dict)
    node_local_settings: frozenset[str] = frozenset()
    triggers: Mapping[TableName, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, *tables: str | TableName | TableInfo, **kwargs: Any) -> "Catalog":
        """A catalog of registered tables given by name (for tests and ``explain --table``).

        >>> Catalog.of("accounts").tables[TableName("public", "accounts")].name
        TableName(schema='public', name='accounts')
        """
        infos: dict[TableName, TableInfo] = {}
        for t in tables:
            if isinstance(t, TableInfo):
                info = t
            else:
                info = TableInfo(t if isinstance(t, TableName) else TableName.parse(t))
            infos[info.name] = info
        return cls(tables=infos, **kwargs)

    def __post_init__(self) -> None:
        # Truly frozen: the gate caches per catalog, so its mappings must not change.
        for name in ("tables", "functions", "sequences", "triggers"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "relations", frozenset(self.relations))
        object.__setattr__(self, "node_local_settings", frozenset(self.node_local_settings))

    def __hash__(self) -> int:  # Mappings are not hashable; identity is enough for caches
        return id(self)


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

_RELATIONS_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
"""

_COLUMNS_SQL = """
SELECT a.attname,
       coalesce(pg_get_expr(d.adbin, d.adrelid), pg_get_expr(t.typdefaultbin, 0)),
       a.attgenerated <> '', a.attidentity <> ''
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_type t ON t.oid = a.atttypid AND t.typtype = 'd'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_KEYS_SQL = """
SELECT array_agg(a.attname::text ORDER BY a.attname)
FROM pg_index i
JOIN LATERAL unnest(i.indkey) AS k(attnum) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
HAVING bool_and(a.attnotnull)
"""

_FUNCTIONS_SQL = """
SELECT n.nspname, p.proname,
       CASE WHEN bool_or(p.provolatile = 'v') THEN 'v'
            WHEN bool_or(p.provolatile = 's') THEN 's' ELSE 'i' END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname <> 'information_schema'
GROUP BY 1, 2
"""

_SEQUENCES_SQL = """
SELECT sn.nspname, s.relname, tn.nspname, t.relname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i')
  AND (tn.nspname, t.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

_SETTINGS_SQL = "SELECT lower(name) FROM pg_settings"

_TRIGGERS_SQL = """
SELECT tg.tgname
FROM pg_trigger tg
JOIN pg_proc p ON p.oid = tg.tgfoid
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE tg.tgrelid = %s AND NOT tg.tgisinternal AND p.provolatile = 'v'
  AND n.nspname <> 'replicate'
ORDER BY 1
"""


_REGISTERED_SQL = """
SELECT table_name FROM replicate.registered_tables
UNION
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = 'replicate_guard'
ORDER BY 1"""


def registered_names(conn: Any) -> list[str]:
    """The tables a node treats as registered: those recorded in ``replicate.registered_tables``
    and those that already carry the guard trigger (``table add`` installs the guard on every
    node before the log registers the table, so a node that lags behind the registration
    already counts it). Empty where the replicate schema is not installed."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('replicate.registered_tables') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute(_REGISTERED_SQL)
        return [row[0] for row in cur.fetchall()]


def load_catalog(conn: Any, registered: Iterable[TableName | str]) -> Catalog:
    """Read a :class:`Catalog` from one node through a psycopg connection.

    ``registered`` names the registered tables; names that do not exist on the node are
    skipped (the statement would fail there anyway). Every value is bound as a query
    parameter. The connection is only read from; the caller owns its transaction.
    """
    names = [n if isinstance(n, TableName) else TableName.parse(n) for n in registered]
    functions: dict[tuple[str, str], Volatility] = {}
    with conn.cursor() as cur:
        cur.execute(_FUNCTIONS_SQL)
        for schema, name, vol in cur.fetchall():
            functions[(schema, name)] = vol
        cur.execute(_TABLES_SQL, ([n.schema for n in names], [n.name for n in names]))
        found = cur.fetchall()
        cur.execute(_SEQUENCES_SQL, ([n.schema for n in names], [n.name for n in names]))
        sequences = {TableName(a, b): TableName(c, d) for a, b, c, d in cur.fetchall()}
        tables: dict[TableName, TableInfo] = {}
        triggers: dict[TableName, tuple[str, ...]] = {}
        # Print defaults with every name qualified, so they mean the same under any
        # session search_path when the gate splices them into a statement.
        cur.execute("SELECT current_setting('search_path')")
        saved_path = cur.fetchone()[0]
        cur.execute("SELECT set_config('search_path', '', false)")
        try:
            for oid, schema, relname in found:
                cur.execute(_COLUMNS_SQL, (oid,))
                columns = []
                for name, default, generated, identity in cur.fetchall():
                    if generated:
                        columns.append(ColumnInfo(name))
                        continue
                    seq = identity or (default is not None and "nextval(" in default)
                    vol = default is not None and default_is_volatile(
                        default, functions, sequences)
                    columns.append(ColumnInfo(name, default, vol, seq))
                cur.execute(_KEYS_SQL, (oid,))
                keys = tuple(frozenset(row[0]) for row in cur.fetchall())
                tn = TableName(schema, relname)
                tables[tn] = TableInfo(tn, tuple(columns), keys)
                cur.execute(_TRIGGERS_SQL, (oid,))
                names = tuple(row[0] for row in cur.fetchall())
                if names:
                    triggers[tn] = names
        finally:
            cur.execute("SELECT set_config('search_path', %s, false)", (saved_path,))
        cur.execute(_RELATIONS_SQL)
        relations = frozenset(TableName(s, r) for s, r in cur.fetchall())
        cur.execute(_SETTINGS_SQL)
        settings = frozenset(r[0] for r in cur.fetchall()) - REPLICATED_SETTINGS
    return Catalog(tables=tables, relations=relations, functions=functions,
                   sequences=sequences, node_local_settings=settings, triggers=triggers)


def default_is_volatile(expr: str, functions: Mapping[tuple[str, str], Volatility],
                        sequences: Mapping[TableName, TableName]) -> bool:
    """Would this default expression compute differently on two nodes?

    Decided by the gate's own analysis of ``SELECT <expr>`` as if it were written into a
    registered write: time functions, random functions and volatile functions count;
    ``nextval`` of a sequence owned by a registered table does not.
    """
    from replicate.gate.analyze import expression_is_nondeterministic

    return expression_is_nondeterministic(expr, functions, sequences)
