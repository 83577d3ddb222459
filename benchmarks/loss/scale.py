"""The loss benchmark's scale section (large ``B``, the largest ``B`` within a memory budget) and its
``torch.profiler`` section (see :mod:`benchmarks.run`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from marginnce_loss import LocalizationMarginNCE

from ..timing import fwd_bwd, gradient_bytes, peak_bytes, sync, timed
from .cases import FORMULATIONS, MARGIN, features, loss_functions

__all__ = ["bench_scale", "bench_profile"]


def _default_loss(formulation: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The package's loss with its default backend (``"auto"``)."""
    if formulation == "max-MIL":
        return LocalizationMarginNCE("max", margin=MARGIN, tau=0.03, symmetric=True)
    return LocalizationMarginNCE("thresholded", margin=MARGIN, tau=0.07)


def _measure_once(loss_fn, b: int, channels: int, side: int, device: torch.device, budget_s: float) -> dict:
    """Peak (first call, also the warm-up) and median time of up to 3 further calls within ``budget_s``."""
    img, aud = features(b, channels, side, side, device, seed=b)
    step = fwd_bwd(loss_fn, img, aud)
    peak = peak_bytes(step, device)
    img.grad = aud.grad = None
    times = [timed(step, device)]
    while len(times) < 3 and sum(times) * (len(times) + 1) / len(times) <= budget_s:
        times.append(timed(step, device))
    grads = gradient_bytes(img, aud)
    inputs = grads  # the leaves have the gradients' shapes and dtypes
    del img, aud, step
    return {"peak_MB": peak / 2**20, "loss_MB": (peak - grads) / 2**20, "inputs_MB": inputs / 2**20,
            "median_ms": 1e3 * statistics.median(times), "times_ms": [1e3 * t for t in times]}


def _largest_b(total_bytes: Callable[[int], float], budget: float, start: int = 2) -> int:
    """Largest ``B`` with ``total_bytes(B) <= budget`` for a ``total_bytes`` increasing in ``B``."""
    lo, hi = start, start
    if total_bytes(lo) > budget:
        return 0
    while total_bytes(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total_bytes(mid) <= budget else (lo, mid)
    return lo


def bench_scale(
    sizes: Mapping[int, Sequence[int]],
    channels: int,
    device: torch.device,
    budget_gib: float,
    upstream_cap_gib: float,
    calibration_b: int,
    budget_s: float,
    log: Callable[[str], None],
    formulations: Sequence[str] = tuple(FORMULATIONS),
) -> dict:
    """Peak memory and time of the default loss at large ``B``; the largest ``B`` within a memory budget.

    ``sizes`` maps a feature-map side to its batch sizes. Upstream's loss memory grows as
    ``B^2 HW`` (its dense ``[B, B, H, W]`` tensors): its bytes per response-map element are measured
    at ``calibration_b`` and re-measured at every larger size it runs at (the largest calibrates the
    model: fixed overheads weigh less there), and upstream runs at a size only where the model predicts at most
    ``upstream_cap_gib`` (inputs, gradients and loss); elsewhere its row holds the model's
    prediction (``"source": "model"``). Ours is run at every size; its largest ``B`` comes from a
    least-squares fit ``c2 B^2 + c1 B`` of its measured loss memory at the sizes from the median
    up (past the sizes where the forward keeps copies for the backward). The budget counts
    the inputs, their gradients and the loss's own peak.
    """
    losses = {name: fns["upstream"] for name, fns in loss_functions([]).items()}
    rows: list[dict] = []
    largest: list[dict] = []
    budget = budget_gib * 2**30
    for formulation in formulations:
        for side in sorted(sizes):
            hw = side * side
            per_b = 2 * 4 * (hw * channels + channels)  # inputs and their gradients, float32
            cal = _measure_once(losses[formulation], calibration_b, channels, side, device, 0.0)
            per_element = cal["loss_MB"] * 2**20 / (calibration_b**2 * hw)
            calibrated_at = calibration_b
            ours_points = []
            for b in sizes[side]:
                predicted = per_element * b * b * hw + per_b * b
                up: dict[str, Any] = {"formulation": formulation, "B": b, "H": side, "W": side, "variant": "upstream"}
                if predicted <= upstream_cap_gib * 2**30:
                    up.update(
                        _measure_once(losses[formulation], b, channels, side, device, budget_s), source="measured"
                    )
                    # the largest measured size calibrates the model (fixed overheads weigh less there)
                    per_element = up["loss_MB"] * 2**20 / (b * b * hw)
                    calibrated_at = b
                else:
                    up.update(
                        peak_MB=(predicted - per_b * b / 2) / 2**20,
                        loss_MB=(predicted - per_b * b) / 2**20,
                        inputs_MB=per_b * b / 2 / 2**20,
                        median_ms=None,
                        times_ms=[],
                        source="model",
                    )
                ours: dict[str, Any] = {
                    "formulation": formulation,
                    "B": b,
                    "H": side,
                    "W": side,
                    "variant": "ours (default)",
                }
                ours.update(
                    _measure_once(_default_loss(formulation), b, channels, side, device, budget_s), source="measured"
                )
                ours_points.append((b, ours["loss_MB"] * 2**20))
                ours["memory_vs_upstream"] = up["loss_MB"] / ours["loss_MB"] if ours["loss_MB"] > 0 else None
                ours["speedup_vs_upstream"] = up["median_ms"] / ours["median_ms"] if up["median_ms"] else None
                rows += [up, ours]
                log(
                    f"scale {formulation:8s} B={b:5d} {side}x{side}: upstream {up['loss_MB']:.0f} MiB ({up['source']})"
                    + (f" {up['median_ms']:.0f} ms" if up["median_ms"] else "")
                    + f", ours {ours['loss_MB']:.0f} MiB {ours['median_ms']:.0f} ms"
                )
            fit_points = [p for p in ours_points if p[0] >= statistics.median([q[0] for q in ours_points])]
            if len(fit_points) >= 2:
                x = torch.tensor([[b * b, b] for b, _ in fit_points], dtype=torch.float64)
                y = torch.tensor([[m] for _, m in fit_points], dtype=torch.float64)
                c2, c1 = torch.linalg.lstsq(x, y).solution.flatten().tolist()
            else:  # one point: the B^2 term through it
                b_max, m_max = fit_points[0]
                c2, c1 = m_max / b_max**2, 0.0
            ours_total = lambda b, c2=c2, c1=c1, per_b=per_b: max(c2 * b * b + c1 * b, 0.0) + per_b * b  # noqa: E731
            up_total = lambda b, pe=per_element, hw=hw, per_b=per_b: pe * b * b * hw + per_b * b  # noqa: E731
            largest.append(
                {
                    "formulation": formulation,
                    "H": side,
                    "W": side,
                    "budget_GiB": budget_gib,
                    "upstream_B": _largest_b(up_total, budget),
                    "ours_B": _largest_b(ours_total, budget),
                    "upstream_bytes_per_map_element": per_element,
                    "calibration_B": calibrated_at,
                    "ours_fit_bytes": [c2, c1],
                    "ours_fit_points": [b for b, _ in fit_points],
                    "ours_fit_max_rel_residual": max(abs(ours_total(b) - per_b * b - m) / m for b, m in fit_points),
                }
            )
            log(
                f"largest B in {budget_gib:g} GiB, {formulation} {side}x{side}: "
                f"upstream {largest[-1]['upstream_B']}, ours {largest[-1]['ours_B']}"
            )
    return {"rows": rows, "largest_batch": largest, "upstream_cap_GiB": upstream_cap_gib}


def bench_profile(
    formulation: str, b: int, side: int, channels: int, device: torch.device, steps: int, top: int
) -> dict:
    """``torch.profiler`` self CPU time per operator over ``steps`` forward + backward calls, upstream and ours."""
    from torch.profiler import ProfilerActivity, profile

    variants: dict[str, Any] = {}
    out = {"formulation": formulation, "B": b, "H": side, "W": side, "steps": steps, "variants": variants}
    for name, loss_fn in (
        ("upstream", loss_functions([])[formulation]["upstream"]),
        ("ours (default)", _default_loss(formulation)),
    ):
        img, aud = features(b, channels, side, side, device, seed=b)
        step = fwd_bwd(loss_fn, img, aud)
        for _ in range(2):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
                sync(device)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        variants[name] = {
            "total_ms_per_step": total / 1e3 / steps,
            "ops": [
                {
                    "op": e.key,
                    "calls_per_step": e.count / steps,
                    "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                }
                for e in events[:top]
            ],
        }
    return out
