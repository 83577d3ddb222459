r"""Benchmark the loss fast path: ``python -m benchmarks.run [--quick]``.

For each formulation (max-MIL symmetric as EZ-VSL trains it; eq. 1 one direction as the reference
model trains it), each batch size ``B`` and feature map ``H x W`` (``C = 512``):

- ``upstream``: the formulation written the upstream way (:mod:`benchmarks.upstream_style`);
- ``eager`` / ``compiled``: :class:`marginnce_loss.LocalizationMarginNCE` with that backend;
- ``eager-rows`` (eq. 1, one thread only): eager with the rows product instead of the batched
  products eq. 1 picks for NCHW features with one thread, so that choice is measured too;
- ``floor``: the bare matrix products the formulation cannot avoid, on pre-laid-out contiguous
  operands (max-MIL: ``X @ A^T`` once; eq. 1: ``X @ A^T``, ``G @ A``, ``G^T @ X`` with
  ``X = [B*HW, C]``, ``G = [B*HW, B]``).

Each timing is one forward + backward to leaf features (wall clock, the device synchronised).
The variants of one size are timed interleaved in one process, in a rotating order, and a ratio is
the median of the per-round ratios, so machine noise common to a round cancels. Peak memory is
the most bytes the forward + backward allocated above what was allocated before it, gradients
included: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the allocation and free events of
``torch.profiler`` (``profile_memory=True``) replayed in time order.

Scale section (skipped by ``--quick``): peak memory and time of the default loss at large ``B``
(7 x 7 up to 4096, 14 x 14 up to 2048), upstream beside it where its memory model predicts it
fits ``--upstream-cap-gib`` (its prediction otherwise), and the largest ``B`` whose inputs,
gradients and loss memory fit ``--memory-budget-gib`` (16 GiB), from each side's memory model (see
:func:`bench_scale`). Profile section: ``torch.profiler`` self time per operator of one case
(``--profile-case``, default max-MIL B = 128, 7 x 7), upstream and ours.

Finally the loss's share of one training step of the reference model (ResNet-18 image and audio
encoders, random init, batch 32, 224 x 224 images, 257 x 200 spectrograms, SGD): the loss's
forward + backward time on the step's features over the whole step's time, timed interleaved.

The load average before and after is recorded: on a shared machine absolute times are inflated;
the interleaved ratios are what to read.

Writes ``benchmarks/results/<device>[-1thread].json`` (every number) and ``.md`` (the tables) and
prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import marginnce_loss
from marginnce_loss import LocalizationMarginNCE

from . import upstream_style
from .machine import device_name, write_results  # noqa: F401 (benchmarks.run.device_name keeps working)

RESULTS = Path(__file__).resolve().parent / "results"
MARGIN = -0.2
FORMULATIONS = {
    "max-MIL": "max-MIL, symmetric (EZ-VSL: tau 0.03)",
    "eq1": "eq. 1, image anchor (reference model: tau 0.07, eps 0.65, beta 0.03)",
}


# --------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def fwd_bwd(loss_fn: Callable[[Tensor, Tensor], Tensor], img: Tensor, aud: Tensor) -> Callable[[], Tensor]:
    def step() -> Tensor:
        img.grad = None
        aud.grad = None
        loss = loss_fn(img, aud)
        loss.backward()
        return loss.detach()

    return step


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes ``fn`` had allocated at once above what was allocated when it started.

    Frees of memory allocated before the call would lower the count: free it first."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return int(peak)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """``repeats`` rounds; each round times every function once, starting at a rotating offset."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(timed(fns[name], device))
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(num, den))


def ratio_quartiles(num: list[float], den: list[float]) -> list[float]:
    """First and third quartiles of the per-round ratios (the spread behind :func:`median_ratio`)."""
    ratios = sorted(n / d for n, d in zip(num, den))
    if len(ratios) < 2:
        return [ratios[0], ratios[0]]
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return [q[0], q[2]]


def gradient_bytes(img: Tensor, aud: Tensor) -> int:
    """Bytes of the two leaf gradients (``img``'s and ``aud``'s shapes and dtypes)."""
    return img.numel() * img.element_size() + aud.numel() * aud.element_size()


def _rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` (a few arg-max ties resolved differently barely move it)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------- loss benchmark
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
                        f"{r['variant']} {r['median_ms']:.1f} ms ({r['speedup_vs_upstream']:.2f}x up, {r['x_floor']:.2f}x floor)"
                        for r in rows[-len(fns):]
                    )
                )
                del img, aud, fns
    return rows


# --------------------------------------------------------------------------- scale
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
    sizes: dict[int, Sequence[int]],
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
                up = {"formulation": formulation, "B": b, "H": side, "W": side, "variant": "upstream"}
                if predicted <= upstream_cap_gib * 2**30:
                    up.update(_measure_once(losses[formulation], b, channels, side, device, budget_s), source="measured")
                    # the largest measured size calibrates the model (fixed overheads weigh less there)
                    per_element = up["loss_MB"] * 2**20 / (b * b * hw)
                    calibrated_at = b
                else:
                    up.update(peak_MB=(predicted - per_b * b / 2) / 2**20, loss_MB=(predicted - per_b * b) / 2**20,
                              inputs_MB=per_b * b / 2 / 2**20, median_ms=None, times_ms=[], source="model")
                ours = {"formulation": formulation, "B": b, "H": side, "W": side, "variant": "ours (default)"}
                ours.update(_measure_once(_default_loss(formulation), b, channels, side, device, budget_s), source="measured")
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
                    "formulation": formulation, "H": side, "W": side, "budget_GiB": budget_gib,
                    "upstream_B": _largest_b(up_total, budget), "ours_B": _largest_b(ours_total, budget),
                    "upstream_bytes_per_map_element": per_element, "calibration_B": calibrated_at,
                    "ours_fit_bytes": [c2, c1], "ours_fit_points": [b for b, _ in fit_points],
                    "ours_fit_max_rel_residual": max(abs(ours_total(b) - per_b * b - m) / m for b, m in fit_points),
                }
            )
            log(f"largest B in {budget_gib:g} GiB, {formulation} {side}x{side}: upstream {largest[-1]['upstream_B']}, ours {largest[-1]['ours_B']}")
    return {"rows": rows, "largest_batch": largest, "upstream_cap_GiB": upstream_cap_gib}


# --------------------------------------------------------------------------- profile
def bench_profile(formulation: str, b: int, side: int, channels: int, device: torch.device, steps: int, top: int) -> dict:
    """``torch.profiler`` self CPU time per operator over ``steps`` forward + backward calls, upstream and ours."""
    from torch.profiler import ProfilerActivity, profile

    out = {"formulation": formulation, "B": b, "H": side, "W": side, "steps": steps, "variants": {}}
    for name, loss_fn in (("upstream", loss_functions([])[formulation]["upstream"]), ("ours (default)", _default_loss(formulation))):
        img, aud = features(b, channels, side, side, device, seed=b)
        step = fwd_bwd(loss_fn, img, aud)
        for _ in range(2):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
                _sync(device)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        out["variants"][name] = {
            "total_ms_per_step": total / 1e3 / steps,
            "ops": [{"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps} for e in events[:top]],
        }
    return out


# --------------------------------------------------------------------------- training step
class ReferenceModel(nn.Module):
    """EZ-VSL's architecture as the reference model uses it: ResNet-18 image encoder (the 7 x 7
    feature map, 1 x 1 projection) and ResNet-18 audio encoder with a 1-channel stem (global max
    pool, linear projection); both outputs L2-normalised over channels."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        import torchvision

        image = torchvision.models.resnet18(weights=None)
        audio = torchvision.models.resnet18(weights=None)
        audio.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.image = nn.Sequential(*list(image.children())[:-2])
        self.audio = nn.Sequential(*list(audio.children())[:-2], nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.image_proj = nn.Conv2d(512, dim, kernel_size=1)
        self.audio_proj = nn.Linear(512, dim)

    def forward(self, frames: Tensor, spec: Tensor):
        img = F.normalize(self.image_proj(self.image(frames)), dim=1)
        aud = F.normalize(self.audio_proj(self.audio(spec)), dim=1)
        return img, aud


def bench_train_step(
    batch: int, image: int, spec: Sequence[int], backends: Sequence[str], repeats: int, device: torch.device, log: Callable[[str], None]
) -> list[dict]:
    try:
        model = ReferenceModel().to(device)
    except ImportError as error:  # torchvision is the "kit" extra
        log(f"training step skipped: {error}")
        return []
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, 3, image, image, generator=g).to(device)
    spectrogram = torch.randn(batch, 1, spec[0], spec[1], generator=g).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    variants = {k: v for k, v in loss_functions(backends)["eq1"].items() if k != "eager-rows"}

    def train_step(loss_fn):
        def step():
            optimizer.zero_grad(set_to_none=True)
            img, aud = model(frames, spectrogram)
            loss = loss_fn(img, aud)
            loss.backward()
            optimizer.step()

        return step

    with torch.no_grad():
        img0, aud0 = model(frames, spectrogram)
    img0, aud0 = img0.detach().requires_grad_(), aud0.detach().requires_grad_()
    fns: dict[str, Callable[[], object]] = {}
    for name, loss_fn in variants.items():
        fns[f"step/{name}"] = train_step(loss_fn)
        fns[f"loss/{name}"] = fwd_bwd(loss_fn, img0, aud0)
    for fn in fns.values():  # warm up, compile
        fn()
    times = interleaved(fns, repeats, device)
    rows = []
    for name in variants:
        step_ms = 1e3 * statistics.median(times[f"step/{name}"])
        loss_ms = 1e3 * statistics.median(times[f"loss/{name}"])
        rows.append(
            {
                "variant": name,
                "batch": batch,
                "feature_map": list(img0.shape[1:]),
                "step_ms": step_ms,
                "loss_ms": loss_ms,
                "loss_share": loss_ms / step_ms,
                "repeats": repeats,
            }
        )
        log(f"training step, {name}: step {step_ms:.0f} ms, loss {loss_ms:.2f} ms ({100 * loss_ms / step_ms:.2f}%)")
    return rows


# --------------------------------------------------------------------------- report
def _load_note(meta: dict) -> str:
    shared = max((meta.get("load_before") or [0])[0], (meta.get("load_after") or [0])[0]) > 0.5 + meta["threads"]
    if not shared:
        return ""
    return (
        "**Shared machine**: the 1-minute load average exceeded this run's threads, other jobs were running. "
        "Absolute times are inflated and noisy; the speed-ups are medians of ratios within interleaved rounds "
        "(noise common to a round cancels), their quartiles show the spread that remains."
    )


def markdown(meta: dict, rows: list[dict], train: list[dict], scale: dict | None = None, prof: dict | None = None) -> str:
    lines = [
        f"# Loss benchmark: {meta['device']}",
        "",
        f"`{meta['command']}` on {meta['date']}; torch {meta['torch']}, {meta['threads']} intra-op thread(s), "
        f"load average {meta['load_before']} before and {meta['load_after']} after; "
        f"features {meta['layout']}, C = {meta['channels']}, margin {MARGIN}; run time {meta.get('run_s', 0):.0f} s.",
        "",
        _load_note(meta),
        "",
        "Forward + backward to leaf features, median wall time. `speed-up` = median over interleaved rounds of "
        "upstream time / this time, with the quartiles of the per-round ratios; `x floor` = median of this time / "
        "the bare matrix products' time (max-MIL: 1 product, eq. 1: 3) on pre-laid-out operands; `peak` = most bytes "
        "allocated at once above the inputs, gradients included; `loss` = peak less the two gradients (the loss's own "
        f"memory) ({meta['memory_measure']}).",
        "",
    ]
    for formulation, title in FORMULATIONS.items():
        sub = [r for r in rows if r["formulation"] == formulation]
        if not sub:
            continue
        lines += [
            f"## {title}",
            "",
            "| B | H x W | variant | median ms | speed-up (quartiles) | x floor | peak MiB | loss MiB |",
            "|---:|:---:|:---|---:|---:|---:|---:|---:|",
        ]
        for r in sub:
            peak = "" if r["peak_MB"] is None else f"{r['peak_MB']:.1f}"
            loss = "" if r.get("loss_MB") is None else f"{r['loss_MB']:.1f}"
            q = r.get("speedup_quartiles") or [float("nan")] * 2
            speed = "" if r["variant"] == "upstream" else f"{r['speedup_vs_upstream']:.2f}x ({q[0]:.2f}-{q[1]:.2f})"
            lines.append(
                f"| {r['B']} | {r['H']}x{r['W']} | {r['variant']} | {r['median_ms']:.2f} | {speed} | {r['x_floor']:.2f} | {peak} | {loss} |"
            )
        lines.append("")
    if scale:
        lines += [
            "## Scale: large batches, the default backend",
            "",
            "One measured call for peak memory (it is also the warm-up), then up to 3 timed calls (median). "
            f"Upstream runs only where its memory model predicts at most {scale['upstream_cap_GiB']:g} GiB; elsewhere its "
            "row is the model's prediction (`model`: bytes per response-map element measured at the largest B it "
            "ran at, times B^2 HW; that B per case is in the last table).",
            "",
            "| formulation | B | H x W | variant | source | median ms | peak MiB | loss MiB | upstream / ours loss memory |",
            "|:---|---:|:---:|:---|:---|---:|---:|---:|---:|",
        ]
        for r in scale["rows"]:
            ms = "" if r["median_ms"] is None else f"{r['median_ms']:.0f}"
            mem = f"{r['memory_vs_upstream']:.1f}" if r.get("memory_vs_upstream") else ""
            lines.append(
                f"| {r['formulation']} | {r['B']} | {r['H']}x{r['W']} | {r['variant']} | {r['source']} | {ms} | "
                f"{r['peak_MB']:.0f} | {r['loss_MB']:.0f} | {mem} |"
            )
        lines += [
            "",
            "Largest B whose inputs, gradients and loss memory fit the budget (both from memory models: upstream's "
            "`bytes per map element x B^2 HW`, ours a least-squares `c2 B^2 + c1 B` through its measured points from "
            "the median size up; `fit residual` = its largest relative error there):",
            "",
            "| formulation | H x W | budget | upstream B | ours B | upstream model measured at B | ours fit points | fit residual |",
            "|:---|:---:|---:|---:|---:|---:|:---|---:|",
        ]
        for r in scale["largest_batch"]:
            lines.append(
                f"| {r['formulation']} | {r['H']}x{r['W']} | {r['budget_GiB']:g} GiB | {r['upstream_B']} | {r['ours_B']} | "
                f"{r['calibration_B']} | {', '.join(map(str, r['ours_fit_points']))} | {100 * r['ours_fit_max_rel_residual']:.1f}% |"
            )
        lines.append("")
    if prof:
        lines += [f"## Profile: {prof['formulation']}, B = {prof['B']}, {prof['H']}x{prof['W']} (torch.profiler, self CPU time per step)", ""]
        for name, v in prof["variants"].items():
            lines += [f"{name}: {v['total_ms_per_step']:.2f} ms per step", "", "| op | calls/step | self ms/step |", "|:---|---:|---:|"]
            lines += [f"| `{o['op']}` | {o['calls_per_step']:g} | {o['self_ms_per_step']:.2f} |" for o in v["ops"]]
            lines.append("")
    if train:
        t = train[0]
        lines += [
            f"## Loss share of a reference-model training step (batch {t['batch']}, features {t['feature_map']})",
            "",
            "| loss | step ms | loss fwd+bwd ms | share |",
            "|:---|---:|---:|---:|",
        ]
        for t in train:
            lines.append(f"| {t['variant']} | {t['step_ms']:.0f} | {t['loss_ms']:.2f} | {100 * t['loss_share']:.2f}% |")
        lines.append("")
    return "\n".join(lines)


def _scale_sizes(items: Sequence[str]) -> dict[int, list[int]]:
    """``["7:1024,2048", "14:512"]`` -> ``{7: [1024, 2048], 14: [512]}``."""
    out: dict[int, list[int]] = {}
    for item in items:
        try:
            side, bs = item.split(":")
            out[int(side)] = [int(b) for b in bs.split(",")]
        except ValueError:
            raise SystemExit(f"--scale-sizes: expected SIDE:B1,B2,... (e.g. 7:1024,2048), got {item!r}") from None
    return out


def _profile_case(text: str):
    try:
        formulation, b, side = text.split(":")
        if formulation not in FORMULATIONS:
            raise ValueError
        return formulation, int(b), int(side)
    except ValueError:
        raise SystemExit(f"--profile-case: expected FORMULATION:B:SIDE with FORMULATION in {list(FORMULATIONS)}, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="B in {32, 128}, 7x7 only, fewer rounds, no scale section or profile")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 32 64 128 256 512 1024")
    p.add_argument("--spatial", type=int, nargs="+", default=None, help="feature map sides, default: 7 14")
    p.add_argument("--formulations", nargs="+", choices=list(FORMULATIONS), default=list(FORMULATIONS))
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="rounds per size (default 15, --quick 5)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds per size: fewer rounds for big sizes (>= 3)")
    p.add_argument("--no-compiled", action="store_true", help="skip backend='compiled'")
    p.add_argument("--channels-last", action="store_true", help="feed channels-last image features")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--scale-sizes", nargs="+", default=None, metavar="SIDE:B1,B2",
                   help="scale section sizes (default 7:1024,2048,4096 14:512,1024,2048)")
    p.add_argument("--no-scale", action="store_true", help="skip the scale section")
    p.add_argument("--memory-budget-gib", type=float, default=16.0, help="budget for the largest-B estimate")
    p.add_argument("--upstream-cap-gib", type=float, default=6.0,
                   help="run upstream in the scale section only where its model predicts at most this much")
    p.add_argument("--calibration-batch", type=int, default=256, help="B at which upstream's memory model is measured")
    p.add_argument("--scale-budget", type=float, default=60.0, help="seconds of timed calls per scale size (>= 1 call)")
    p.add_argument("--profile-case", default="max-MIL:128:7", help="FORMULATION:B:SIDE profiled with torch.profiler")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-train-step", action="store_true")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-image", type=int, default=224)
    p.add_argument("--train-spec", type=int, nargs=2, default=[257, 200])
    p.add_argument("--train-repeats", type=int, default=None, help="default 5 (--quick 3)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--name", default=None, help="results file stem (default: the device name, + '-1thread' with one thread)")
    p.add_argument("--data-loading", action="store_true",
                   help="also run benchmarks.data_loading (its own data-loading-<cpu>.md/.json in --out)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_sizes = args.batch_sizes or ([32, 128] if args.quick else [32, 64, 128, 256, 512, 1024])
    spatial = args.spatial or ([7] if args.quick else [7, 14])
    repeats = args.repeats or (5 if args.quick else 15)
    backends = ["eager"] if args.no_compiled else ["eager", "compiled"]
    scale_sizes = _scale_sizes(args.scale_sizes) if args.scale_sizes else {7: [1024, 2048, 4096], 14: [512, 1024, 2048]}
    run_scale = not args.no_scale and (not args.quick or args.scale_sizes is not None)
    run_profile = not args.no_profile and not args.quick
    profile_case = _profile_case(args.profile_case)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    meta = {
        "device": device_name(device),
        "command": "python -m benchmarks.run" + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "marginnce_loss": marginnce_loss.__version__,
        "threads": torch.get_num_threads(),
        "channels": args.channels,
        "layout": "channels-last" if args.channels_last else "NCHW",
        "load_before": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "memory_measure": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events",
    }
    rows = bench_losses(batch_sizes, spatial, args.channels, backends, repeats, args.budget, device, args.channels_last, log, args.formulations)
    scale = None
    if run_scale:
        scale = bench_scale(scale_sizes, args.channels, device, args.memory_budget_gib, args.upstream_cap_gib,
                            args.calibration_batch, args.scale_budget, log, args.formulations)
    prof = None
    if run_profile:
        prof = bench_profile(*profile_case, args.channels, device, steps=5, top=12)
    train = []
    if not args.no_train_step:
        train = bench_train_step(
            args.train_batch, args.train_image, args.train_spec, backends, args.train_repeats or (3 if args.quick else 5), device, log
        )
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    meta["run_s"] = time.perf_counter() - started
    result = {"meta": meta, "losses": rows, "scale": scale, "profile": prof, "train_step": train}
    if args.data_loading:  # one worker's clips/s, ours vs upstream-style (see benchmarks/data_loading.py)
        from . import data_loading

        quick = ["--clips", "16", "--rounds", "3"] if args.quick else []
        result["data_loading"] = data_loading.main(["--out", str(args.out)] + quick)["pipelines"]
    report = markdown(meta, rows, train, scale, prof)
    write_results(args.out, args.name or (meta["device"] + ("-1thread" if meta["threads"] == 1 else "")), result, report)
    print(report)
    return result


if __name__ == "__main__":
    main()
