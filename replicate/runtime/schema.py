"""Install and upgrade the ``replicate`` schema (``sql/*.sql``) in one PostgreSQL node.

Theory of operation:

- Every file ``sql/NNN_name.sql`` starts with the line ``-- replicate schema version V: ...``:
  the file belongs to schema version ``V``. Files run in name order.
- A node records its version in ``replicate.meta`` (``schema_version``). ``install`` runs, in
  one transaction and under a transaction-scoped advisory lock (so concurrent installs on one
  node queue instead of failing), every file whose version is above the node's, then records
  ``SCHEMA_VERSION``. A node already at ``SCHEMA_VERSION`` is left untouched. A node whose
  version is above ``SCHEMA_VERSION`` is refused: this code does not know its tables.
- The files are idempotent on their own (``IF NOT EXISTS``, ``CREATE OR REPLACE``), so a file
  that runs on a node that already has part of it does no harm.

Where the files are: ``sql/`` at the top of the repository, as the design lays it out, found
relative to this module (``<repo>/replicate/runtime/schema.py`` -> ``<repo>/sql``). That is
what an editable install (``pip install -e .``, how we install) sees. A wheel would need them
as data files; ``sys.prefix/share/replicate/sql`` is searched second so that adding
``[tool.setuptools.data-files] "share/replicate/sql" = ["sql/*.sql"]`` to pyproject is all a
wheel build needs, and ``REPLICATE_SQL_DIR`` overrides both.
"""

from __future__ import annotations

import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psycopg

from replicate.cluster.binaries import MIN_MAJOR
from replicate.config import ClusterConfig, NodeConfig
from replicate.errors import ReplicateError

SCHEMA_VERSION = 10

# pg_advisory_xact_lock key taken by every install: the bytes of "replicat" as a bigint.
_LOCK_KEY = int.from_bytes(b"replicat", "big") & 0x7FFF_FFFF_FFFF_FFFF

_HEADER = re.compile(r"\A-- replicate schema version (\d+):")

_READ_VERSION = "SELECT value FROM replicate.meta WHERE key = 'schema_version'"
_WRITE_VERSION = (
    "INSERT INTO replicate.meta (key, value) VALUES ('schema_version', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


class SchemaError(ReplicateError):
    """The replicate schema of a node cannot be used or installed by this code."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class UnsupportedServer(SchemaError):
    """The node runs a PostgreSQL older than replicate supports."""

    sqlstate = "0A000"  # feature_not_supported


def require_supported(server_version: int) -> None:
    """Refuse a server whose ``server_version_num`` (e.g. 120022) is below ``MIN_MAJOR``:
    the schema may install there, but nothing was ever tested on it."""
    major = server_version // 10000
    if major < MIN_MAJOR:
        raise UnsupportedServer(
            f"PostgreSQL {major} is too old; replicate needs {MIN_MAJOR} or newer",
            hint="upgrade this node's PostgreSQL; every node should run the same major version")


def mixed_majors(versions: dict[str, str]) -> str | None:
    """A warning when the nodes (name -> ``server_version``, e.g. "15.4") run different major
    versions, else None. A statement can mean different things on two majors (a function or a
    syntax one of them lacks), so every node should run the same one."""
    majors: dict[str, list[str]] = {}
    for name, version in versions.items():
        majors.setdefault(version.split(".")[0].split()[0], []).append(name)
    if len(majors) < 2:
        return None
    spread = "; ".join(f"PostgreSQL {major} on {', '.join(names)}"
                       for major, names in sorted(majors.items(), key=lambda kv: int(kv[0])))
    return (f"the nodes run different PostgreSQL major versions ({spread}); a statement that "
            "one of them does not know, or runs differently, would fail or diverge there")


@dataclass(frozen=True, slots=True)
class SqlFile:
    """One file of ``sql/``: the schema version it belongs to, its name and its text."""

    version: int
    name: str
    text: str


def sql_dir() -> Path:
    """The directory holding the schema files (see the module docstring for the search)."""
    candidates = []
    if os.environ.get("REPLICATE_SQL_DIR"):
        candidates.append(Path(os.environ["REPLICATE_SQL_DIR"]))
    candidates.append(Path(__file__).resolve().parents[2] / "sql")
    candidates.append(Path(sys.prefix) / "share" / "replicate" / "sql")
    for path in candidates:
        if (path / "001_schema.sql").is_file():
            return path
    raise SchemaError("cannot find the replicate schema files (sql/001_schema.sql)",
                      detail="looked in " + ", ".join(str(p) for p in candidates),
                      hint="install replicate with `pip install -e .` from its repository, "
                           "or set REPLICATE_SQL_DIR")


@lru_cache(maxsize=1)
def sql_files() -> tuple[SqlFile, ...]:
    """Every schema file, in name order, with the version its header declares."""
    files = []
    for path in sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql")):
        text = path.read_text(encoding="utf-8")
        header = _HEADER.match(text)
        if header is None:
            raise SchemaError(f"{path} does not start with '-- replicate schema version N:'")
        version = int(header.group(1))
        if version > SCHEMA_VERSION:
            raise SchemaError(f"{path} declares schema version {version}, "
                              f"above this code's {SCHEMA_VERSION}")
        files.append(SqlFile(version, path.name, text))
    return tuple(files)


def _pending(before: int | None) -> list[SqlFile]:
    """The files to run on a node at version ``before`` (None: no schema), refusing newer."""
    if before is not None and before > SCHEMA_VERSION:
        raise SchemaError(
            f"the replicate schema of this database is version {before}, newer than the "
            f"version {SCHEMA_VERSION} this replicate knows",
            hint="run a replicate release that knows this schema version; never downgrade")
    floor = 0 if before is None else before
    return [f for f in sql_files() if f.version > floor]


def _parse_version(row: tuple | None) -> int:
    if row is None:
        return 0  # replicate.meta exists but holds no version: treat as before version 1
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(f"replicate.meta holds a schema_version that is not a number: "
                          f"{row[0]!r}") from None


def installed_version(conn: psycopg.Connection) -> int | None:
    """The schema version recorded in this database, or None if replicate is not installed."""
    if conn.execute("SELECT to_regclass('replicate.meta')").fetchone()[0] is None:
        return None
    return _parse_version(conn.execute(_READ_VERSION).fetchone())


def install(conn: psycopg.Connection) -> int:
    """Install or upgrade the schema to ``SCHEMA_VERSION``; return the version now installed.

    One transaction (a savepoint if the caller has one open); idempotent; safe to run from
    several processes at once on one node. Raises ``SchemaError`` for a newer schema.
    """
    return upgrade(conn)[1]


def upgrade(conn: psycopg.Connection) -> tuple[int | None, int]:
    """``install``, returning ``(version before, version after)``, both read under the lock."""
    sql_files()  # read (and check) the files before touching the database
    require_supported(conn.info.server_version)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        before = installed_version(conn)
        if before == SCHEMA_VERSION:
            return before, SCHEMA_VERSION
        for file in _pending(before):
            conn.execute(file.text.encode(), prepare=False)  # simple query: many statements
        conn.execute(_WRITE_VERSION, (str(SCHEMA_VERSION),))
    return before, SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class NodeInstall:
    """What ``install_cluster`` did on one node: versions before and after, or the error."""

    name: str
    before: int | None = None
    after: int | None = None
    sqlstate: str | None = None
    error: str | None = None
    server_version: str | None = None  # the node's PostgreSQL, e.g. "15.4", once connected

    @property
    def ok(self) -> bool:
        return self.error is None


def _install_node(node: NodeConfig, connect_timeout_s: float) -> NodeInstall:
    version = None
    try:
        with psycopg.connect(node.dsn, connect_timeout=max(2, math.ceil(connect_timeout_s))
                             ) as conn:
            version = conn.info.parameter_status("server_version")
            before, after = upgrade(conn)
        return NodeInstall(node.name, before, after, server_version=version)
    except ReplicateError as exc:
        return NodeInstall(node.name, sqlstate=exc.sqlstate, error=exc.message,
                           server_version=version)
    except psycopg.Error as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        # No SQLSTATE on the exception: the server never answered (connection failure).
        return NodeInstall(node.name, sqlstate=exc.sqlstate or "08006", error=message,
                           server_version=version)


def install_cluster(config: ClusterConfig) -> list[NodeInstall]:
    """Install or upgrade the schema on every node of ``config`` at once; one report per node,
    in configuration order. A node that fails does not stop the others."""
    with ThreadPoolExecutor(max_workers=min(16, len(config.nodes))) as pool:
        return list(pool.map(lambda n: _install_node(n, config.connect_timeout_s), config.nodes))


async def ainstalled_version(conn: psycopg.AsyncConnection) -> int | None:
    """Async twin of ``installed_version``."""
    cur = await conn.execute("SELECT to_regclass('replicate.meta')")
    if (await cur.fetchone())[0] is None:
        return None
    cur = await conn.execute(_READ_VERSION)
    return _parse_version(await cur.fetchone())


async def ainstall(conn: psycopg.AsyncConnection) -> int:
    """Async twin of ``install``."""
    sql_files()
    require_supported(conn.info.server_version)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        before = await ainstalled_version(conn)
        if before == SCHEMA_VERSION:
            return SCHEMA_VERSION
        for file in _pending(before):
            await conn.execute(file.text.encode(), prepare=False)
        await conn.execute(_WRITE_VERSION, (str(SCHEMA_VERSION),))
    return SCHEMA_VERSION
