"""The loss benchmark's cases: each formulation written the upstream way and as the package computes it, the bare
matrix-product floor, and :func:`bench_losses`, which times them interleaved per size (see :mod:`benchmarks.run`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from marginnce_loss import LocalizationMarginNCE

from .. import upstream_style
from ..timing import fwd_bwd, gradient_bytes, interleaved, median_ratio, peak_bytes, ratio_quartiles, timed
from ..timing import rel_err as _rel_err

__all__ = ["MARGIN", "FORMULATIONS", "features", "loss_functions", "floor_function", "bench_losses"]


MARGIN = -0.2


FORMULATIONS = {
    "max-MIL": "max-MIL, symmetric (EZ-VSL: tau 0.03)",
    "eq1": "eq. 1, image anchor (reference model: tau 0.07, eps 0.65, beta 0.03)",
}


def features(b: int, c: int, h: int, w: int, device: torch.device, seed: int = 0, channels_last: bool = False):
    """L2-normalised leaf features ``img [B, C, H, W]``, ``aud [B, C]`` that require grad."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, c, h, w, generator=g), dim=1)
    aud = F.normalize(torch.randn(b, c, generator=g), dim=1)
    img = img.to(device)
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    return img.requires_grad_(), aud.to(device).requires_grad_()


def loss_functions(backends: Sequence[str]) -> dict[str, dict[str, Callable[[Tensor, Tensor], Tensor]]]:
    """``{formulation: {variant: loss(img, aud)}}``."""
    out: dict[str, dict[str, Callable[[Tensor, Tensor], Tensor]]] = {
        "max-MIL": {"upstream": lambda i, a: upstream_style.ezvsl_loss(i, a, 0.03, MARGIN)},
        "eq1": {"upstream": lambda i, a: upstream_style.eq1_loss(i, a, 0.65, 0.03, 0.07, MARGIN)},
    }
    for backend in backends:
        out["max-MIL"][backend] = LocalizationMarginNCE("max", margin=MARGIN, tau=0.03, symmetric=True, backend=backend)
        out["eq1"][backend] = LocalizationMarginNCE("thresholded", margin=MARGIN, tau=0.07, backend=backend)
    if "eager" in backends and torch.get_num_threads() == 1:
        # eq. 1 on NCHW features picks its products by thread count (see marginnce_loss._kernels._batched):
        # with one thread, time the other choice too, so the rule's measurement is in the table
        out["eq1"]["eager-rows"] = _without_batched(out["eq1"]["eager"])
    return out


def _without_batched(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss_fn`` with eq. 1's one-thread batched products turned off (the rows product instead)."""
    from marginnce_loss import _kernels

    def call(img: Tensor, aud: Tensor) -> Tensor:
        chosen = _kernels._batched
        _kernels._batched = lambda *_args: False  # read in the forward only (the backward follows ctx)
        try:
            return loss_fn(img, aud)
        finally:
            _kernels._batched = chosen

    return call


def floor_function(formulation: str, b: int, c: int, hw: int, device: torch.device) -> Callable[[], object]:
    """The bare products on pre-laid-out contiguous operands (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b * hw, c, generator=g).to(device)
    a = torch.randn(b, c, generator=g).to(device)
    grad = torch.randn(b * hw, b, generator=g).to(device)
    if formulation == "max-MIL":
        return lambda: torch.mm(x, a.t())
    return lambda: (torch.mm(x, a.t()), torch.mm(grad, a), torch.mm(grad.t(), x))


def bench_losses(
    batch_sizes: Sequence[int],
    spatial: Sequence[int],
    channels: int,
    backends: Sequence[str],
    repeats: int,
    budget_s: float,
    device: torch.device,
    channels_last: bool,
    log: Callable[[str], None],
    formulations: Sequence[str] = tuple(FORMULATIONS),
) -> list[dict]:
    rows = []
    losses = loss_functions(backends)
    for formulation, variants in losses.items():
        if formulation not in formulations:
            continue
        for hw_side in spatial:
            for b in batch_sizes:
                img, aud = features(b, channels, hw_side, hw_side, device, seed=b, channels_last=channels_last)
                fns: dict[str, Callable[[], object]] = {name: fwd_bwd(fn, img, aud) for name, fn in variants.items()}
                fns["floor"] = floor_function(formulation, b, channels, hw_side * hw_side, device)
                # warm up (compiles the compiled backend) and check every variant against upstream
                reference = None
                agree = {}
                first_call = {}
                for name in variants:
                    t0 = time.perf_counter()
                    value = fns[name]()
                    first_call[name] = time.perf_counter() - t0
                    grads = (value, img.grad.clone(), aud.grad.clone())
                    if reference is None:
                        reference = grads
                    else:
                        agree[name] = max(_rel_err(x, y) for x, y in zip(grads, reference))
                fns["floor"]()
                single = {name: timed(fn, device) for name, fn in fns.items()}
                n = max(3, min(repeats, int(budget_s / max(sum(single.values()), 1e-9))))
                times = interleaved(fns, n, device)
                peaks = {}
                for name in variants:
                    img.grad = aud.grad = None  # freed before, not during, the measured call
                    peaks[name] = peak_bytes(fns[name], device)
                for name in fns:
                    row = {
                        "formulation": formulation,
                        "B": b,
                        "H": hw_side,
                        "W": hw_side,
                        "C": channels,
                        "variant": name,
                        "repeats": n,
                        "median_ms": 1e3 * statistics.median(times[name]),
                        "times_ms": [1e3 * t for t in times[name]],
                        "speedup_vs_upstream": median_ratio(times["upstream"], times[name]),
                        "speedup_quartiles": ratio_quartiles(times["upstream"], times[name]),
                        "x_floor": median_ratio(times[name], times["floor"]),
                        "peak_MB": peaks[name] / 2**20 if name in peaks else None,
                        # the loss's own memory: the peak less the two gradients it must return
                        "loss_MB": (peaks[name] - gradient_bytes(img, aud)) / 2**20 if name in peaks else None,
                        "first_call_s": first_call.get(name),
                        "rel_err_vs_upstream": agree.get(name),  # loss, grad img, grad aud: worst
                        "matches_upstream": None if name not in agree else agree[name] <= 1e-4,
                    }
                    rows.append(row)
                log(
                    f"{formulation:8s} B={b:4d} {hw_side}x{hw_side}: "
                    + ", ".join(
                        f"{r['variant']} {r['median_ms']:.1f} ms ({r['speedup_vs_upstream']:.2f}x up, "
                        f"{r['x_floor']:.2f}x floor)"
                        for r in rows[-len(fns) :]
                    )
                )
                del img, aud, fns
    return rows
