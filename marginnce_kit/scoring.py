"""Deprecated (0.2.0): the evaluation loop and the bound rows now live in :mod:`marginnce_kit.evaluation` beside the
metric; this module re-exports them under their old home and names (``reference_rows`` and ``reference_rows_for`` are
the older names of ``bound_rows`` and ``bound_rows_for``)."""

from __future__ import annotations

from .evaluation import bound_rows, bound_rows_for, evaluate_model

__all__ = ["evaluate_model", "bound_rows", "bound_rows_for", "reference_rows", "reference_rows_for"]

reference_rows, reference_rows_for = bound_rows, bound_rows_for
