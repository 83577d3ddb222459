"""The parts of :mod:`benchmarks.device_check`: its plan, subprocesses, steps, workers and report."""
