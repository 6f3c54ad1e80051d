"""Smoke run of the benchmark runner (``python -m benchmarks --quick``) so that it cannot rot.

It starts a real 3-node cluster with proxies and drives pgbench for a few seconds. It checks that
the run completes and reports what it should; it never asserts anything about timings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed"),
]


def test_quick_benchmark_run() -> None:
    out = Path(tempfile.mkdtemp(prefix="replicate-bench-smoke-"))
    try:
        result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        data = json.loads((out / "bench.json").read_text())
        assert data["meta"]["quick"] and data["meta"]["fsync"]
        assert set(data["meta"]["workloads"]) == {"W2", "W4"}
        comparisons = {c["workload"]: c for c in data["comparisons"]}
        assert set(comparisons) == {"W2", "W4"}
        for c in comparisons.values():
            assert c["mode"] == "simple" and c["clients"] == 1
            assert c["direct_tps"] > 0 and c["proxied_tps"] > 0, c
            assert c["tps_ratio"] is not None and c["errors"] == [], c
            assert c["proxied_p50_ms"] is not None and c["proxied_p99_ms"] is not None
        # per-configuration measurements are present (values are not judged)
        w2 = next(r for r in data["results"] if r["workload"] == "W2" and r["target"] == "proxied")
        assert w2["transactions"] > 0 and w2["proxy_cpu_s_per_1k"] is not None
        assert set(w2["wal_syncs_per_1k"]) == {"n1", "n2", "n3"}
        # memory and storage: every proxy's resident set, every node's bytes per write
        assert set(w2["proxy_rss_mb"]) == {"n1", "n2", "n3"}
        assert all(mb > 0 for mb in w2["proxy_rss_mb"].values()), w2
        assert set(data["meta"]["proxy_peak_rss_mb"]) == {"n1", "n2", "n3"}
        assert set(data["meta"]["proxy_rss_mb_at_start"]) == {"n1", "n2", "n3"}
        peak = data["meta"]["proxy_peak_rss_mb"]
        assert all(mb >= w2["proxy_rss_mb"][n] for n, mb in peak.items()), peak
        assert all(b is not None for b in w2["db_bytes_per_txn"].values()), w2
        # pg_stat_wal: PostgreSQL 14 and newer (18 counts the syncs in pg_stat_io)
        major = int(data["meta"]["postgresql"].split(".")[0])
        assert data["meta"]["wal_sync_available"] is (major >= 14), data["meta"]
        if data["meta"]["wal_sync_available"]:
            # every node logs and syncs every replicated write (its accept commits with
            # fsync); the direct run logs on its node only
            assert all(b > 0 for b in w2["wal_bytes_per_txn"].values()), w2
            assert all(v > 0 for v in w2["wal_syncs_per_1k"].values()), w2
            assert comparisons["W2"]["direct_wal_bytes_per_txn"] > 0, comparisons["W2"]
            assert comparisons["W2"]["wal_bytes_ratio"] > 0, comparisons["W2"]
            assert set(w2["wal_fpi_per_1k"]) == {"n1", "n2", "n3"}
            assert all(v is not None and v >= 0 for v in w2["wal_fpi_per_1k"].values()), w2
        assert "proxy RSS" in result.stdout and "WAL B/txn" in result.stdout
        assert {t["workload"] for t in data["targets"]} == {"W2", "W4"}
        # the floor of the W2 cell: the design's database work alone (benchmarks/floor.py)
        fl = next(r for r in data["results"] if r["target"] == "floor")
        assert (fl["workload"], fl["table"]) == ("W2", "floor_accounts")
        assert fl["tps"] > 0 and fl["p50_ms"] is not None and fl["errors"] == [], fl
        w2c = comparisons["W2"]
        assert w2c["floor_tps_ratio"] > 0 and w2c["share_of_floor"] > 0, w2c
        assert all(t["floor"] is not None and t["reachable_here"] in (True, False)
                   for t in data["targets"] if t["workload"] == "W2"), data["targets"]
        # W4's floor: SELECT 1 through socat, when the machine has socat
        w4c = comparisons["W4"]
        if shutil.which("socat"):
            assert data["meta"]["floor_relay"] == "socat"
            assert w4c["floor_tps"] > 0 and w4c["floor_p50_ms"] is not None, w4c
            (t4,) = [t for t in data["targets"] if t["workload"] == "W4"]
            assert t4["floor"] == w4c["floor_tps_ratio"] and t4["reachable_here"] in (True, False)
        else:
            assert data["meta"]["floor_relay"] is None and w4c["floor_tps"] is None
        assert "floor" in result.stdout and data["meta"]["floor_payload_bytes"] > 0
        assert data["check"]["exit_code"] == 0, data["check"]
        assert "W2" in result.stdout and "ratio" in result.stdout  # the table on stdout
        png = out / "bench.png"
        if _has_matplotlib():
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
