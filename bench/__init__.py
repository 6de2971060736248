"""Benchmarks: what Prefect orchestration costs over a plain Dagger script.

Run ``python -m bench.run`` from the repository root; see ``bench/run.py``.
"""
