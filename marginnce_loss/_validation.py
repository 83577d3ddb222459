"""Argument checks shared by the functional core, the modules and the adapters.

Every check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument, says what was expected and what was received.
Nothing is coerced: a scalar check returns the value as a Python ``float`` / ``int`` / ``bool``
only when it is one already, or a numpy scalar or 0-d array, 0-d tensor holding one (read exactly).

The public functions of the package check their arguments once and then call private, unchecked
steps (``functional._...``, ``_kernels``); nothing checks the same tensor twice in one call.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch

from ._numeric import opmath_dtype

REDUCTIONS = ("mean", "sum", "none")

#: Largest allowed deviation of a feature's L2 norm from 1 before :func:`warn_unnormalized` warns
#: (a float32 unit vector rounded to bfloat16 is off by at most ~2e-3).
NORM_TOLERANCE = 1e-2

#: Largest allowed ``|S|`` before :func:`warn_out_of_range` warns (cosine similarities lie in [-1, 1]).
SIMILARITY_BOUND = 1.0 + NORM_TOLERANCE


def check_bool(name: str, value: object) -> bool:
    """A ``bool`` (``0`` / ``1`` and numpy bools are refused: nothing is coerced).

    Raises:
        TypeError: ``value`` is not a ``bool``.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """An ``int`` (``bool`` refused), at least ``minimum`` when given.

    Raises:
        TypeError: ``value`` is not an ``int`` (or is a ``bool``).
        ValueError: ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _real(name: str, value: object) -> float:
    """A real scalar as a Python float: ``int``, ``float``, numpy integer/floating scalars
    (``numbers.Real``) or 0-d arrays, or a 0-d integer/floating tensor that does not require grad."""
    expected = "a finite float (int, float, numpy scalar or 0-d array, 0-d tensor)"
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise TypeError(f"{name}: expected {expected}, got a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"{name}: expected {expected}, got a 0-d tensor of dtype {value.dtype}")
        if value.requires_grad:
            raise TypeError(
                f"{name}: expected {expected} without grad (only the temperature tau of eq. 3 may be learnable), "
                f"got a 0-d tensor that requires grad; pass {name}.detach()"
            )
        return float(value.item())
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # a 0-d array, read exactly
        if getattr(getattr(value, "dtype", None), "kind", None) not in ("i", "u", "f"):
            raise TypeError(f"{name}: expected {expected}, got a 0-d array of dtype {value.dtype}")  # type: ignore[attr-defined]
        return float(value.item())  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    return float(value)


def check_finite(name: str, value: object) -> float:
    """A finite real number as a ``float`` (``bool`` rejected; numpy scalars and 0-d tensors read exactly).

    Raises:
        TypeError: not a real scalar (e.g. a string, a ``bool``, a 1-element 1-d tensor, a tensor
            that requires grad).
        ValueError: NaN or infinite.
    """
    v = _real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite float, got {value!r}")
    return v


def check_positive(name: str, value: object) -> float:
    """A finite real number > 0, as :func:`check_finite` reads it.

    Raises:
        TypeError: as :func:`check_finite`.
        ValueError: NaN, infinite, or ``<= 0``.
    """
    v = check_finite(name, value)
    if v <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got {value!r}")
    return v


def check_temperature(name: str, value: object) -> float | torch.Tensor:
    """The temperature of eq. 3: as :func:`check_positive`, or a 0-d floating tensor that requires grad
    (a learnable temperature: ``nn.Parameter(torch.tensor(0.07))``, or ``1 / logit_scale.exp()``),
    returned as that tensor so the gradient reaches it. Its value is checked (one host sync).

    Raises:
        TypeError: as :func:`check_positive`; a tensor that requires grad but is not 0-d floating point.
        ValueError: NaN, infinite or ``<= 0``.
    """
    if not (isinstance(value, torch.Tensor) and value.requires_grad):
        return check_positive(name, value)
    if value.dim() != 0 or not value.dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected a learnable temperature as a 0-d floating-point tensor, got shape "
            f"{tuple(value.shape)} dtype {value.dtype}"
        )
    v = float(value.detach())
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got a tensor holding {v!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices``.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_features(name: str, tensor: object, ndim: int, layout: str) -> torch.Tensor:
    """Check that ``tensor`` is a non-empty floating-point tensor with ``ndim`` dimensions.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong number of dimensions, an empty batch or an empty dimension.
    """
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


def check_pair(img: object, aud: object, same_batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Check an image feature map ``img`` [B, C, H, W] against audio embeddings ``aud`` [B', C]
    (``B' = B`` with ``same_batch``); returns ``(img, aud)``.

    Raises:
        TypeError: not tensors, not floating point, or different dtypes.
        ValueError: wrong shapes (an ``img`` shaped ``[B, H, W, C]`` is named as such), different
            devices, or different batch sizes with ``same_batch``.
    """
    img = check_features("img", img, 4, "[B, C, H, W]")
    aud = check_features("aud", aud, 2, "[B, C]")
    c = aud.shape[1]
    if img.shape[1] != c:
        if img.shape[3] == c:
            raise ValueError(
                f"img: expected shape [B, C, H, W] with C = {c} (aud's C), got shape {tuple(img.shape)}, "
                f"which looks like [B, H, W, C]; pass img.permute(0, 3, 1, 2) (a channels-last memory "
                f"layout of a [B, C, H, W] tensor is supported as it is)"
            )
        raise ValueError(
            f"aud: expected {img.shape[1]} channels to match img's C, got shape {tuple(aud.shape)} "
            f"(img has shape {tuple(img.shape)})"
        )
    if img.device != aud.device:
        raise ValueError(f"aud: expected a tensor on img's device {img.device}, got device {aud.device}")
    if img.dtype != aud.dtype:
        raise TypeError(f"aud: expected img's dtype {img.dtype}, got {aud.dtype}")
    if same_batch and img.shape[0] != aud.shape[0]:
        raise ValueError(f"aud: expected batch size {img.shape[0]} to match img, got shape {tuple(aud.shape)}")
    return img, aud


def check_has_negatives(img: torch.Tensor) -> None:
    """A loss over one batch needs ``B >= 2``: a single pair has no negative.

    Raises:
        ValueError: ``B < 2``.
    """
    if img.shape[0] < 2:
        raise ValueError(
            f"img: expected B >= 2 (a single pair has no negative, the loss would be identically 0), "
            f"got shape {tuple(img.shape)}"
        )


def check_sim(sim: object, extra_negatives: object | None) -> torch.Tensor:
    """Check a [B, B] similarity matrix and optional [B, K] extra negatives; returns ``sim``.

    Raises:
        TypeError: not tensors or not floating point.
        ValueError: ``sim`` not square, ``B = 1`` without extra negatives, ``extra_negatives`` of
            another batch size or on another device.
    """
    sim = check_features("sim", sim, 2, "[B, B]")
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
    if isinstance(extra_negatives, torch.Tensor) and extra_negatives.dim() == 1:
        raise ValueError(
            f"extra_negatives: expected a 2-d tensor of shape [{sim.shape[0]}, K], got 1-d shape "
            f"{tuple(extra_negatives.shape)} (for a [B] vector use extra_negatives.unsqueeze(1))"
        )
    extra = check_features("extra_negatives", extra_negatives, 2, "[B, K]")
    if extra.shape[0] != sim.shape[0]:
        raise ValueError(
            f"extra_negatives: expected shape [{sim.shape[0]}, K] to match sim's batch size, "
            f"got shape {tuple(extra.shape)}"
        )
    if extra.device != sim.device:
        raise ValueError(
            f"extra_negatives: expected a tensor on sim's device {sim.device}, got device {extra.device}"
        )
    return sim


# ---------------------------------------------------------------- the input guard of the modules
_GUARD_HINT = "pass check_inputs=False to the loss to silence this check"


def warn_unnormalized(img: torch.Tensor, aud: torch.Tensor) -> bool:
    r"""Warn (``UserWarning``) when ``img`` [B, C, H, W] or ``aud`` [B', C] is not unit-length over ``C``.

    Eq. 1's threshold ``epsilon`` (0.65) and the temperature ``tau`` only mean something on
    cosine similarities, i.e. features L2-normalised over ``C`` (paper section 2.1). Zero vectors
    (``F.normalize`` of a zero vector) are allowed. Also names the dimension the features look
    normalised over when it is not ``C``, and counts the vectors that hold NaN or Inf (they would
    otherwise pass: NaN compares False with the tolerance). One reduction over each tensor and one
    host sync; returns whether it warned.
    """
    warned = False
    with torch.no_grad():
        for name, x in (("img", img), ("aud", aud)):
            norms = torch.linalg.vector_norm(x.detach(), dim=1, dtype=opmath_dtype(x.dtype))
            # written as "not within" so that NaN norms count as bad (every comparison with NaN is False)
            bad = ~((norms - 1).abs() <= NORM_TOLERANCE) & (norms != 0)
            if not bool(bad.any()):
                continue
            nonfinite = int((~torch.isfinite(norms)).sum())
            if nonfinite:  # e.g. F.normalize in float16, whose eps 1e-12 rounds to 0: 0 / 0 (lightly-ai/lightly#1259)
                warnings.warn(
                    f"{name}: expected finite features L2-normalised over C, got NaN or Inf: {nonfinite} of "
                    f"{norms.numel()} feature vectors are not finite (F.normalize of a near-zero vector in float16 "
                    f"gives NaN: its eps 1e-12 rounds to 0); the loss will be NaN; {_GUARD_HINT}",
                    UserWarning,
                    stacklevel=4,
                )
                warned = True
                continue
            lo, hi = float(norms.min()), float(norms.max())
            hint = ""
            for d in range(x.dim()):
                if d == 1 or x.shape[d] < 2:
                    continue
                other = torch.linalg.vector_norm(x.detach(), dim=d, dtype=opmath_dtype(x.dtype))
                if bool(((other - 1).abs() <= NORM_TOLERANCE).all()):
                    hint = f"; it looks L2-normalised over dim {d} instead"
                    break
            warnings.warn(
                f"{name}: expected features L2-normalised over C (dim 1: every norm 1 within {NORM_TOLERANCE:g}, "
                f"as F.normalize({name}, dim=1) gives), got norms in [{lo:.4g}, {hi:.4g}]{hint}. epsilon and tau "
                f"assume cosine similarities in [-1, 1]; {_GUARD_HINT}",
                UserWarning,
                stacklevel=4,
            )
            warned = True
    return warned


def warn_out_of_range(sim: torch.Tensor, extra_negatives: torch.Tensor | None) -> bool:
    """Warn (``UserWarning``) when a similarity lies outside ``[-1, 1]`` (beyond :data:`SIMILARITY_BOUND`).

    marginNCE divides by ``tau`` itself; a ``sim`` that already holds logits ``S / tau`` (or dot
    products of unnormalised features) is divided twice. One reduction and one host sync; returns
    whether it warned.
    """
    warned = False
    with torch.no_grad():
        for name, x in (("sim", sim), ("extra_negatives", extra_negatives)):
            if x is None:
                continue
            peak = float(x.detach().abs().max())
            if peak > SIMILARITY_BOUND:
                warnings.warn(
                    f"{name}: expected similarities in [-1, 1] (cosines of L2-normalised features; the loss "
                    f"divides by tau itself), got |{name}| up to {peak:.4g}. Logits already divided by tau go to "
                    f"marginnce_loss.adapters.margin_cross_entropy; {_GUARD_HINT}",
                    UserWarning,
                    stacklevel=4,
                )
                warned = True
    return warned
