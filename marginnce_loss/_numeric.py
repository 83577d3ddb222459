"""Numeric helpers of the kernels: the dtype reductions run in, and when eq. 1's weights need the stable form."""

from __future__ import annotations

import torch

__all__ = ["opmath_dtype", "needs_stable_weights", "STABLE_LIMIT"]

#: float32 sigmoid leaves the normal range below about -87 (float64: -708); past a margin from that the
#: soft-threshold weights switch to a shifted log-space form that cannot underflow.
STABLE_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reductions run in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def needs_stable_weights(epsilon: float, beta: float, dtype: torch.dtype) -> bool:
    """Whether the soft-threshold weights of cosine responses could underflow (see :data:`STABLE_LIMIT`)."""
    return (1.0 + abs(epsilon)) / beta > STABLE_LIMIT[opmath_dtype(dtype)]
