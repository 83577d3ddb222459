"""The device check's first step, child side: every fused kernel and both adapters, compiled vs eager vs float64.

For each case of :data:`CASES` (the four kernels of :data:`marginnce_loss._compiled.KERNELS` that the losses use,
through the public API, and the EZ-VSL and reference adapters) on the same features (``B x C x side x side``,
unit length over ``C``):

- ``float64``: the eager kernel in float64 on the CPU (the kernels' own tests pin it to references written from
  the formulas);
- ``eager`` / ``compiled``: float32 on the checked device; ``compiled`` asks for ``backend="compiled"`` explicitly
  (also for the max-MIL kernels that ``"auto"`` keeps eager on CUDA, :data:`marginnce_loss._compiled.CUDA_UNVERIFIED`,
  whose once-per-kernel warning is recorded), one warm compile each (first call timed), then ``repeats`` timed
  calls.

A case's value is ``sum(weights * out)`` with fixed random weights (a similarity matrix) or the loss itself; the
errors are ``||x - y|| / ||y||`` of the value and of both gradients (the worst of the three). Checks:
``eager`` within :data:`EAGER_TOL` of float64, ``compiled`` within :data:`COMPILED_TOL` of eager, no compiled
fallback to eager.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..timing import rel_err, sync

__all__ = ["CASES", "EAGER_TOL", "COMPILED_TOL", "worker_kernels"]

#: float32 eager vs float64: the kernels' float32 error (TF32 off, PyTorch's default for float32 matmul).
EAGER_TOL = 1e-4
#: compiled vs eager, both float32: only the order of the fused reductions differs.
COMPILED_TOL = 1e-4


def _cases() -> dict[str, tuple[str, Callable[[str], Callable[[Tensor, Tensor], Tensor]]]]:
    from marginnce_loss import LocalizationMarginNCE
    from marginnce_loss import functional as MF
    from marginnce_loss.adapters import ezvsl, reference

    return {  # name: (its compiled kernel in marginnce_loss._compiled.KERNELS, backend -> fn(img, aud))
        "thresholded_similarity": ("thresholded",
                                   lambda be: lambda i, a: MF.thresholded_similarity(i, a, 0.65, 0.03, backend=be)),
        "max_similarity": ("max", lambda be: lambda i, a: MF.max_similarity(i, a, backend=be)),
        "thresholded_loss": ("thresholded_loss",
                             lambda be: LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07, backend=be)),
        "max_loss": ("max_loss",
                     lambda be: LocalizationMarginNCE("max", margin=-0.2, tau=0.03, symmetric=True, backend=be)),
        "adapters.ezvsl.max_xmil_loss": (
            "max_xmil", lambda be: lambda i, a: ezvsl.max_xmil_loss(i, a, tau=0.03, margin=-0.2, backend=be)[0]),
        "adapters.reference.loss": (
            "thresholded_loss", lambda be: lambda i, a: reference.loss(i, a, margin=-0.2, backend=be)[0]),
    }


#: The cases, in the order they run (see the module docstring).
CASES = tuple(_cases())


def _value_and_grads(fn: Callable[[Tensor, Tensor], Tensor], img: Tensor, aud: Tensor,
                     weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    img = img.detach().clone().requires_grad_()
    aud = aud.detach().clone().requires_grad_()
    out = fn(img, aud)
    value = out if out.dim() == 0 else (out * weights.to(out.dtype)).sum()
    value.backward()
    assert img.grad is not None and aud.grad is not None
    return value.detach(), img.grad, aud.grad


def _worst(got: tuple[Tensor, ...], expected: tuple[Tensor, ...]) -> float:
    return max(rel_err(x.cpu(), y.cpu()) for x, y in zip(got, expected))


def _timed_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def worker_kernels(cfg: dict[str, Any], on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The kernels step (``cfg``: ``device``, ``batch``, ``channels``, ``side``, ``repeats``, ``compiled``: the
    cases to also compile, ``None`` for all); returns ``{"cases": [...], "checks": {...}, ...}``, and gives the
    result so far to ``on_partial`` after every case."""
    from marginnce_loss import _compiled

    device = torch.device(cfg["device"])
    b, c, side = cfg["batch"], cfg["channels"], cfg["side"]
    g = torch.Generator().manual_seed(0)
    img64 = F.normalize(torch.randn(b, c, side, side, generator=g, dtype=torch.float64), dim=1)
    aud64 = F.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)
    weights = torch.randn(b, b, generator=g, dtype=torch.float64)
    img, aud, w32 = img64.float().to(device), aud64.float().to(device), weights.float().to(device)
    compiled = set(CASES if cfg["compiled"] is None else cfg["compiled"])
    rows: list[dict[str, Any]] = []
    checks: dict[str, bool] = {}
    result: dict[str, Any] = {}
    for name, (kernel_name, make) in _cases().items():
        expected = _value_and_grads(make("eager"), img64, aud64, weights)
        eager_fn = make("eager")
        eager = _value_and_grads(eager_fn, img, aud, w32)
        row: dict[str, Any] = {
            "case": name, "kernel": kernel_name, "B": b, "C": c, "H": side, "W": side,
            "value_float64": float(expected[0]), "eager_vs_float64": _worst(eager, expected),
            "eager_ms": _timed_ms(partial(_value_and_grads, eager_fn, img, aud, w32), device, cfg["repeats"]),
            "compiled": name in compiled,
        }
        checks[f"{name}: eager = float64"] = row["eager_vs_float64"] <= EAGER_TOL
        if name in compiled:
            kernel = _compiled.KERNELS[kernel_name]
            fn = make("compiled")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:  # a backward that fails to compile raises in backward(), past the kernel's own fallback
                    sync(device)
                    t0 = time.perf_counter()
                    got = _value_and_grads(fn, img, aud, w32)
                    sync(device)
                    row["first_call_s"] = round(time.perf_counter() - t0, 3)
                    row["compiled_ms"] = _timed_ms(partial(_value_and_grads, fn, img, aud, w32), device,
                                                   cfg["repeats"])
                    row["compiled_vs_eager"] = _worst(got, eager)
                    row["compiled_vs_float64"] = _worst(got, expected)
                except Exception as error:  # noqa: BLE001 -- recorded; the next cases still run
                    row["error"] = f"{type(error).__name__}: {error}"[:500]
            failure = kernel.failure
            row["fallback"] = None if failure is None else f"{type(failure).__name__}: {failure}"[:500]
            row["warnings"] = sorted({str(w.message)[:300] for w in caught})
            checks[f"{name}: compiled = eager"] = row.get("compiled_vs_eager", float("inf")) <= COMPILED_TOL
            checks[f"{name}: no compiled fallback"] = failure is None and "error" not in row
        rows.append(row)
        result = {"cases": rows, "eager_tol": EAGER_TOL, "compiled_tol": COMPILED_TOL,
                  "cuda_unverified": sorted(_compiled.CUDA_UNVERIFIED), "checks": checks}
        if on_partial is not None:
            on_partial(result)  # a worker cut at its limit still leaves the cases it finished
    return result
