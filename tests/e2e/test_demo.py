"""`replicate demo` runs end to end, exits 0 and tells the story it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

from .procs import processes_under

pytestmark = pytest.mark.e2e


def test_demo_runs_and_cleans_up() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "replicate"), "demo"],
                            capture_output=True, text=True, timeout=300,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for words in ("Started 3 PostgreSQL nodes", "registered at slot", "UPDATE 15",
                  "check at slot", "SIGKILLed n3", "0A000", "caught up from the log",
                  "all nodes agree again", "Stopped and removed"):
        assert words in out, words
    assert "DIFFERENT" not in out
    leftovers = [cmd for _, cmd in processes_under(Path("/tmp")) if "replicate-demo-" in cmd]
    assert leftovers == []  # the throwaway cluster's servers and proxies are gone


def test_psycopg_example_runs(make_cluster) -> None:
    import os
    cluster = make_cluster(3)
    cluster.start_proxies()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, str(root / "examples" / "psycopg_through_proxy.py"),
                             str(cluster.config_path)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "written through n1 -> (1, 'ann', Decimal('10.00'))" in result.stdout
    assert "read through n3 -> (1, 'ann', Decimal('10.00'))" in result.stdout
    assert "refused:" in result.stdout
