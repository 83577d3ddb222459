"""Interop with other libraries' loss interfaces; each submodule needs its own optional dependency.

- :mod:`marginnce_loss.contrib.pml`: :class:`MarginNTXentLoss`, pytorch-metric-learning's ``NTXentLoss``
  with marginNCE's margin (extra ``pml``).

Nothing here is imported by ``import marginnce_loss``: the core needs torch (and numpy) only.
"""
