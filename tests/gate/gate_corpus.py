"""The corpus: statements with their expected classification, rewrite or refusal.

Format of ``fixtures/*.txt`` (like sqlglot's tests/fixtures, one case per block, blocks
separated by blank lines):

    # a comment
    @ search_path=app,public            (optional: the session's search_path)
    INSERT INTO ledger VALUES (now())   (SQL, one or more lines)
    => replicate writes=ledger          (one line per statement of the SQL, in order)
    -> INSERT INTO ledger VALUES (...)  (optional after replicate: the rewritten text)

Decision lines: ``=> relay``, ``=> read tables=a,b``, ``=> replicate writes=a reads=b``,
``=> refuse <reason> <SQLSTATE>``. Unqualified names mean ``public``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from replicate.gate import Catalog, ColumnInfo, TableInfo, TableName

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Case:
    file: str
    line: int
    sql: str
    expects: list[str]
    texts: dict[int, str] = field(default_factory=dict)  # statement index -> rewritten text
    search_path: tuple[str, ...] = ("public",)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(FIXTURES.glob("*.txt")):
        lines = path.read_text().split("\n")
        block: list[tuple[int, str]] = []
        for n, line in enumerate(lines + [""], 1):
            if line.strip() == "":
                if block and any(b.startswith("=> ") for _, b in block):
                    cases.append(_case(path.name, block))
                block = []
            else:
                block.append((n, line))
    return cases


def _case(file: str, block: list[tuple[int, str]]) -> Case:
    sql_lines: list[str] = []
    expects: list[str] = []
    texts: dict[int, str] = {}
    search_path = ("public",)
    first = None
    for n, line in block:
        if line.startswith("#") and not sql_lines:
            continue
        if line.startswith("@ search_path="):
            search_path = tuple(s for s in line.split("=", 1)[1].split(",") if s)
            continue
        if line.startswith("=> "):
            expects.append(line[3:].strip())
        elif line.startswith("-> "):  # several lines: a multi-line rewritten text
            i = len(expects) - 1
            texts[i] = texts[i] + "\n" + line[3:] if i in texts else line[3:]
        else:
            if first is None:
                first = n
            sql_lines.append(line)
    return Case(file, first or block[0][0], "\n".join(sql_lines), expects, texts, search_path)


def table_set(spec: str) -> frozenset[TableName]:
    if not spec:
        return frozenset()
    out = set()
    for part in _split_names(spec):
        out.add(TableName.parse(part))
    return frozenset(out)


def _split_names(spec: str) -> list[str]:
    parts, buf, quoted = [], "", False
    for ch in spec:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    parts.append(buf)
    return [p for p in parts if p]


def corpus_catalog() -> Catalog:
    """The database the corpus is written against."""
    accounts = TableInfo(TableName("public", "accounts"), (
        ColumnInfo("id", "nextval('public.accounts_id_seq'::regclass)", False, True),
        ColumnInfo("owner"),
        ColumnInfo("balance", "0"),
        ColumnInfo("token", "gen_random_uuid()", True),
        ColumnInfo("created_at", "now()", True),
    ), (frozenset({"id"}), frozenset({"token"})))
    ledger = TableInfo(TableName("public", "ledger"), (
        ColumnInfo("id", None, False, True),  # identity
        ColumnInfo("account_id"),
        ColumnInfo("amount"),
        ColumnInfo("at"),
        ColumnInfo("note"),
    ), (frozenset({"id"}),))
    items = TableInfo(TableName("public", "items"), (
        ColumnInfo("sku"), ColumnInfo("qty", "0"),
        ColumnInfo("updated", "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC'::text)", True),
    ), (frozenset({"sku"}),))
    events = TableInfo(TableName("public", "events"), (
        ColumnInfo("id"), ColumnInfo("payload"),
        ColumnInfo("seen", "public.touch()", True),
    ), (frozenset({"id"}),))
    mixed = TableInfo(TableName("public", "Mixed Case"), (ColumnInfo("k"), ColumnInfo("v")),
                      (frozenset({"k"}),))
    orders = TableInfo(TableName("app", "Orders"), (ColumnInfo("id"), ColumnInfo("total")),
                       (frozenset({"id"}),))
    counters = TableInfo(TableName("app", "counters"), (ColumnInfo("name"), ColumnInfo("n")),
                         (frozenset({"name"}),))
    audited = TableInfo(TableName("public", "audited"), (ColumnInfo("id"), ColumnInfo("v")),
                        (frozenset({"id"}),))
    unicode = TableInfo(TableName("public", "städte"), (ColumnInfo("name"), ColumnInfo("n")),
                        (frozenset({"name"}),))
    return Catalog(
        tables={t.name: t for t in (accounts, ledger, items, events, mixed, orders, counters,
                                    unicode, audited)},
        triggers={TableName("public", "audited"): ("set_updated_at",)},
        relations=frozenset({TableName("public", "local_log"), TableName("public", "audit"),
                             TableName("app", "accounts"), TableName("public", "global_seq"),
                             TableName("public", "accounts_view")}),
        functions={("public", "slugify"): "i", ("public", "touch"): "v",
                   ("public", "uuid_generate_v4"): "v", ("public", "uuid_generate_v1"): "v",
                   ("public", "lookup"): "s", ("app", "bump"): "v",
                   ("pg_catalog", "uuidv7"): "v"},  # as a PostgreSQL 18 node reports it
        sequences={TableName("public", "accounts_id_seq"): TableName("public", "accounts"),
                   TableName("public", "ledger_id_seq"): TableName("public", "ledger")},
        node_local_settings=frozenset({"port", "application_name"}),
    )
