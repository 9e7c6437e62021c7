"""Benchmarks: ``make bench`` (``python -m bench.serve``) measures the running service."""
