"""Benchmarks of the marginNCE fast path against upstream-style formulations: ``python -m benchmarks.run``."""
