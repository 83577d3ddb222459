"""Timing and memory helpers the benchmarks share (:mod:`benchmarks.run`, :mod:`benchmarks.device_check`):
wall-clock calls with the device synchronised, interleaved rounds and their median ratios, and the peak memory of
one call (``torch.cuda.max_memory_allocated`` on CUDA, ``torch.profiler``'s memory events on CPU)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sync", "fwd_bwd", "timed", "peak_bytes", "interleaved", "median_ratio", "ratio_quartiles",
           "gradient_bytes", "rel_err"]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd(loss_fn: Callable[[Tensor, Tensor], Tensor], img: Tensor, aud: Tensor) -> Callable[[], Tensor]:
    def step() -> Tensor:
        img.grad = None
        aud.grad = None
        loss = loss_fn(img, aud)
        loss.backward()
        return loss.detach()

    return step


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes ``fn`` had allocated at once above what was allocated when it started.

    Frees of memory allocated before the call would lower the count: free it first."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
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


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` (a few arg-max ties resolved differently barely move it)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
