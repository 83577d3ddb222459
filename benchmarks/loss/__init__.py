"""The loss benchmark of :mod:`benchmarks.run`: its cases, scale and profile sections, training step, report."""
