"""Argument checks shared by the functional core, the modules and the adapters.

Every check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument, says what was expected and what was received.
Nothing is coerced.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_features(
    name: str, tensor: object, ndim: int, layout: str
) -> torch.Tensor:
    """Check that ``tensor`` is a non-empty floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {tensor.dtype}"
        )
    if tensor.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-d tensor of shape {layout}, got {tensor.dim()}-d shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch (B >= 1), got shape {tuple(tensor.shape)}")
    if any(s == 0 for s in tensor.shape[1:]):
        raise ValueError(f"{name}: expected no empty dimension in {layout}, got shape {tuple(tensor.shape)}")
    return tensor


def check_pair(img: object, aud: object) -> None:
    """Check an image feature map ``img`` [B, C, H, W] against audio embeddings ``aud`` [B', C]."""
    check_features("img", img, 4, "[B, C, H, W]")
    check_features("aud", aud, 2, "[B, C]")
    assert isinstance(img, torch.Tensor) and isinstance(aud, torch.Tensor)
    if img.shape[1] != aud.shape[1]:
        raise ValueError(
            f"aud: expected {img.shape[1]} channels to match img's C, got shape {tuple(aud.shape)} "
            f"(img has shape {tuple(img.shape)})"
        )
    if img.device != aud.device:
        raise ValueError(f"aud: expected a tensor on img's device {img.device}, got device {aud.device}")
    if img.dtype != aud.dtype:
        raise TypeError(f"aud: expected img's dtype {img.dtype}, got {aud.dtype}")


def check_same_batch(img: torch.Tensor, aud: torch.Tensor) -> None:
    """Paired features: ``img`` and ``aud`` must have the same batch size."""
    if img.shape[0] != aud.shape[0]:
        raise ValueError(
            f"aud: expected batch size {img.shape[0]} to match img, got shape {tuple(aud.shape)}"
        )


def check_finite(name: str, value: object) -> float:
    """A finite real number (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a finite float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite float, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """A finite real number > 0."""
    v = check_finite(name, value)
    if v <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_sim(sim: object, extra_negatives: Optional[object]) -> torch.Tensor:
    """Check a [B, B] similarity matrix and optional [B, K] extra negatives."""
    check_features("sim", sim, 2, "[B, B]")
    assert isinstance(sim, torch.Tensor)
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"sim: expected a square [B, B] matrix (row i = image i, column j = audio j), got shape {tuple(sim.shape)}"
        )
    if extra_negatives is None:
        if sim.shape[0] == 1:
            raise ValueError(
                "sim: expected B >= 2 (a single pair has no negative, the loss would be identically 0), "
                "got shape (1, 1); pass extra_negatives of shape [1, K] to train with B = 1"
            )
        return sim
    check_features("extra_negatives", extra_negatives, 2, "[B, K]")
    assert isinstance(extra_negatives, torch.Tensor)
    if extra_negatives.shape[0] != sim.shape[0]:
        hint = " (for a [B] vector use extra_negatives.unsqueeze(1))" if extra_negatives.dim() == 1 else ""
        raise ValueError(
            f"extra_negatives: expected shape [{sim.shape[0]}, K] to match sim's batch size, "
            f"got shape {tuple(extra_negatives.shape)}{hint}"
        )
    if extra_negatives.device != sim.device:
        raise ValueError(
            f"extra_negatives: expected a tensor on sim's device {sim.device}, got device {extra_negatives.device}"
        )
    return sim


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reductions run in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
