"""Benchmarks for Trustyard, run side by side with the reference registry (CNCF Distribution).

Entry point: ``python -m bench.registry_bench --help``.
"""
