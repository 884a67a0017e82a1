"""Umbra benchmarks: `python -m bench [--quick]` (make bench / make bench-quick)."""
