"""Benchmarks of replicate.

- ``python -m benchmarks``: the end-to-end runner of issue 8 (``benchmarks.runner``): one local
  3-node cluster, pgbench directly against a node and through the proxies, interleaved; a table
  on stdout, ``bench.json`` and ``bench.png``. See BENCHMARKS.md.
- ``python benchmarks/gate.py``: the SQL gate's micro-benchmark and parser comparison.
"""
