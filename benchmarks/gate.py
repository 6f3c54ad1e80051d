"""Benchmark of the SQL gate, and the parser comparison behind its choice of parser.

Run: ``.venv/bin/python benchmarks/gate.py`` (add ``--json`` for machine output).

1. Parser comparison on the gate corpus (tests/gate/fixtures): for sqlglot (postgres
   dialect) and pglast (libpg_query, PostgreSQL's own parser): how many corpus strings
   each parses, splits into the expected number of statements, and names the expected
   registered tables in; and the median time to parse one statement.
2. The gate's budget: median cost of ``classify`` for a single-row upsert on a registered
   table (target <= 100 us) and for a statement touching no registered table
   (target <= 10 us, the fast path).

Timings are medians over many repetitions of one call each (time.perf_counter_ns),
after a warm-up; the gate's pieces are not cached across calls except the per-catalog
name set.
"""

from __future__ import annotations

import json
import logging
import random
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gate"))
sys.path.insert(0, str(ROOT))

import sqlglot  # noqa: E402
from sqlglot import exp  # noqa: E402
from pglast import parser as pg  # noqa: E402

from gate_corpus import corpus_catalog, load_cases, table_set  # noqa: E402
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers  # noqa: E402

logging.getLogger("sqlglot").setLevel(logging.ERROR)
from replicate.gate import Catalog, classify  # noqa: E402
from replicate.gate.catalog import TableName  # noqa: E402

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
UPSERT = ("INSERT INTO accounts (id, owner, balance, token, created_at) "
          "VALUES (42, 'ann', 100, NULL, NULL) "
          "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance")
UNREGISTERED = "SELECT id, name, price FROM products WHERE category = 'books' ORDER BY price"


def median_ns(fn, n: int = 20000) -> float:
    for _ in range(min(n, 2000)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def expected_tables(case) -> frozenset[TableName]:
    out: set[TableName] = set()
    for e in case.expects:
        for word in re.findall(r'(?:[^\s"]|"[^"]*")+', e)[1:]:
            if "=" in word and word.split("=")[0] in ("tables", "writes", "reads"):
                out |= table_set(word.split("=", 1)[1])
    return frozenset(out)


def _on_path(name: str, search_path: tuple[str, ...]) -> TableName:
    cat = corpus_catalog()
    for schema in search_path:
        t = TableName(schema, name)
        if t in cat.tables or t in cat.relations:
            return t
    return TableName(search_path[0], name)


def sqlglot_tables(sql: str, search_path: tuple[str, ...]) -> tuple[int, set[TableName]]:
    trees = [normalize_identifiers(t, dialect="postgres")
             for t in sqlglot.parse(sql, read="postgres") if t is not None]
    cte_names = set()
    names: set[TableName] = set()
    for t in trees:
        for cte in t.find_all(exp.CTE):
            cte_names.add(cte.alias)
        for tab in t.find_all(exp.Table):
            if not tab.name:
                continue
            if not tab.db and tab.name in cte_names:
                continue
            names.add(TableName(tab.db, tab.name) if tab.db else _on_path(tab.name, search_path))
    return len(trees), names


def compare_parsers() -> dict:
    cases = load_cases()
    registered = set(corpus_catalog().tables)
    result = {}
    for name in ("pglast", "sqlglot"):
        parsed = split_ok = tables_ok = 0
        failures = []
        for c in cases:
            try:
                if name == "pglast":
                    stmts = json.loads(pg.parse_sql_json(c.sql))["stmts"]
                    count = len(stmts)
                    ok_tables = None  # the gate's own classification is the corpus result
                else:
                    count, found = sqlglot_tables(c.sql, c.search_path)
                    # refusals name no tables in the corpus: compare where it says which
                    comparable = not any(x.startswith("refuse") for x in c.expects) and \
                        not any("_seq" in x for x in c.expects)
                    ok_tables = (not comparable or
                                 (found & registered) == (expected_tables(c) & registered))
            except Exception as e:  # noqa: BLE001 - any failure to parse counts
                if not any(x.startswith("refuse syntax") for x in c.expects):
                    failures.append((c.id, type(e).__name__))
                else:
                    parsed += 1
                    split_ok += 1
                    tables_ok += 1
                continue
            syntax_case = any(x.startswith("refuse syntax") for x in c.expects)
            if syntax_case:
                failures.append((c.id, "accepted invalid SQL"))
                continue
            parsed += 1
            if count == len(c.expects):
                split_ok += 1
            else:
                failures.append((c.id, f"split into {count}, expected {len(c.expects)}"))
            if ok_tables is None or ok_tables:
                tables_ok += 1
            else:
                failures.append((c.id, "wrong tables"))
        result[name] = {"cases": len(cases), "parsed": parsed, "split_ok": split_ok,
                        "tables_ok": tables_ok, "failures": failures[:40]}
    # speed: the upsert, and the median over the corpus's statements
    result["pglast"]["upsert_us"] = median_ns(lambda: pg.parse_sql_json(UPSERT), 20000) / 1000
    result["sqlglot"]["upsert_us"] = median_ns(
        lambda: sqlglot.parse(UPSERT, read="postgres"), 2000) / 1000
    sample = [c.sql for c in cases if not any(x.startswith("refuse syntax") for x in c.expects)]
    for name, fn in (("pglast", lambda s: pg.parse_sql_json(s)),
                     ("sqlglot", lambda s: sqlglot.parse(s, read="postgres"))):
        per = []
        for s in sample:
            try:
                per.append(median_ns(lambda: fn(s), 200 if name == "sqlglot" else 1000))
            except Exception:  # noqa: BLE001
                pass
        result[name]["corpus_median_us"] = statistics.median(per) / 1000
    return result


def gate_medians() -> dict:
    catalog = corpus_catalog()
    rng = random.Random(1)
    upsert = median_ns(lambda: classify(UPSERT, catalog, now=NOW, rng=rng))
    relay = median_ns(lambda: classify(UNREGISTERED, catalog, now=NOW, rng=rng), 100000)
    big = Catalog.of(*[f"public.table_{i}" for i in range(200)])
    relay_200 = median_ns(lambda: classify(UNREGISTERED, big, now=NOW, rng=rng), 100000)
    rewrite = median_ns(lambda: classify(
        "INSERT INTO accounts (owner) VALUES ('ann')", catalog, now=NOW, rng=rng))
    return {"upsert_us": upsert / 1000, "unregistered_us": relay / 1000,
            "unregistered_200_tables_us": relay_200 / 1000,
            "insert_with_materialised_defaults_us": rewrite / 1000}


def main() -> None:
    report = {"python": sys.version.split()[0], "pglast": getattr(pg, "__version__", ""),
              "sqlglot": sqlglot.__version__, "parsers": compare_parsers(),
              "gate": gate_medians()}
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2, default=str))
        return
    for name in ("pglast", "sqlglot"):
        r = report["parsers"][name]
        print(f"{name:8} parsed {r['parsed']}/{r['cases']}  split ok {r['split_ok']}  "
              f"tables ok {r['tables_ok']}  upsert parse {r['upsert_us']:.1f} us  "
              f"corpus median {r['corpus_median_us']:.1f} us")
        for f in r["failures"][:25]:
            print("    ", *f)
    g = report["gate"]
    print(f"gate: upsert on a registered table  median {g['upsert_us']:.1f} us (budget 100)")
    print(f"gate: no registered table           median {g['unregistered_us']:.2f} us (budget 10)")
    print(f"gate: same, 200 registered tables   median {g['unregistered_200_tables_us']:.2f} us")
    print(f"gate: insert materialising defaults median "
          f"{g['insert_with_materialised_defaults_us']:.1f} us")


if __name__ == "__main__":
    main()
