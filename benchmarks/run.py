r"""Benchmark the loss fast path: ``python -m benchmarks.run [--quick]``.

For each formulation (max-MIL symmetric as EZ-VSL trains it; eq. 1 one direction as the reference
model trains it), each batch size ``B`` and feature map ``H x W`` (``C = 512``):

- ``upstream``: the formulation written the upstream way (:mod:`benchmarks.upstream_style`);
- ``eager`` / ``compiled``: :class:`marginnce_loss.LocalizationMarginNCE` with that backend;
- ``floor``: the bare matrix products the formulation cannot avoid, on pre-laid-out contiguous
  operands (max-MIL: ``X @ A^T`` once; eq. 1: ``X @ A^T``, ``G @ A``, ``G^T @ X`` with
  ``X = [B*HW, C]``, ``G = [B*HW, B]``).

Each timing is one forward + backward to leaf features (wall clock, the device synchronised).
The variants of one size are timed interleaved in one process, in a rotating order, and a ratio is
the median of the per-round ratios, so machine noise common to a round cancels. Peak memory is
the most bytes the forward + backward allocated above what was allocated before it, gradients
included: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the allocation and free events of
``torch.profiler`` (``profile_memory=True``) replayed in time order.

Finally the loss's share of one training step of the reference model (ResNet-18 image and audio
encoders, random init, batch 32, 224 x 224 images, 257 x 200 spectrograms, SGD): the loss's
forward + backward time on the step's features over the whole step's time, timed interleaved.

Writes ``benchmarks/results/<device>.json`` (every number) and ``<device>.md`` (the tables) and
prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from .machine import device_name  # noqa: F401 (benchmarks.run.device_name keeps working)

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
    return out


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
) -> list[dict]:
    rows = []
    losses = loss_functions(backends)
    for formulation, variants in losses.items():
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
                        "x_floor": median_ratio(times[name], times["floor"]),
                        "peak_MB": peaks[name] / 2**20 if name in peaks else None,
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
    except ImportError as error:  # torchvision is the "baselines" extra
        log(f"training step skipped: {error}")
        return []
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, 3, image, image, generator=g).to(device)
    spectrogram = torch.randn(batch, 1, spec[0], spec[1], generator=g).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    variants = loss_functions(backends)["eq1"]

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
def markdown(meta: dict, rows: list[dict], train: list[dict]) -> str:
    lines = [
        f"# Loss benchmark: {meta['device']}",
        "",
        f"`{meta['command']}` on {meta['date']}; torch {meta['torch']}, {meta['threads']} intra-op thread(s), "
        f"load average {meta['load_before']} before and {meta['load_after']} after; "
        f"features {meta['layout']}, C = {meta['channels']}, margin {MARGIN}.",
        "",
        "Forward + backward to leaf features, median wall time. `speed-up` = median over interleaved rounds of "
        "upstream time / this time; `x floor` = median of this time / the bare matrix products' time "
        "(max-MIL: 1 product, eq. 1: 3) on pre-laid-out operands; peak = most bytes allocated at once above "
        f"the inputs, gradients included ({meta['memory_measure']}).",
        "",
    ]
    for formulation, title in FORMULATIONS.items():
        sub = [r for r in rows if r["formulation"] == formulation]
        if not sub:
            continue
        lines += [f"## {title}", "", "| B | H x W | variant | median ms | speed-up | x floor | peak MB |", "|---:|:---:|:---|---:|---:|---:|---:|"]
        for r in sub:
            peak = "" if r["peak_MB"] is None else f"{r['peak_MB']:.1f}"
            speed = "" if r["variant"] == "upstream" else f"{r['speedup_vs_upstream']:.2f}x"
            lines.append(
                f"| {r['B']} | {r['H']}x{r['W']} | {r['variant']} | {r['median_ms']:.2f} | {speed} | {r['x_floor']:.2f} | {peak} |"
            )
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="B in {64, 128}, 7x7 only, fewer rounds")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 64 128 256 512")
    p.add_argument("--spatial", type=int, nargs="+", default=None, help="feature map sides, default: 7 14")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="rounds per size (default 15, --quick 5)")
    p.add_argument("--budget", type=float, default=30.0, help="seconds per size: fewer rounds for big sizes (>= 3)")
    p.add_argument("--no-compiled", action="store_true", help="skip backend='compiled'")
    p.add_argument("--channels-last", action="store_true", help="feed channels-last image features")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-train-step", action="store_true")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-image", type=int, default=224)
    p.add_argument("--train-spec", type=int, nargs=2, default=[257, 200])
    p.add_argument("--train-repeats", type=int, default=None, help="default 5 (--quick 3)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--name", default=None, help="results file stem (default: the device name)")
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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_sizes = args.batch_sizes or ([64, 128] if args.quick else [64, 128, 256, 512])
    spatial = args.spatial or ([7] if args.quick else [7, 14])
    repeats = args.repeats or (5 if args.quick else 15)
    backends = ["eager"] if args.no_compiled else ["eager", "compiled"]

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
    rows = bench_losses(batch_sizes, spatial, args.channels, backends, repeats, args.budget, device, args.channels_last, log)
    train = []
    if not args.no_train_step:
        train = bench_train_step(
            args.train_batch, args.train_image, args.train_spec, backends, args.train_repeats or (3 if args.quick else 5), device, log
        )
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    result = {"meta": meta, "losses": rows, "train_step": train}
    if args.data_loading:  # one worker's clips/s, ours vs upstream-style (see benchmarks/data_loading.py)
        from . import data_loading

        quick = ["--clips", "16", "--rounds", "3"] if args.quick else []
        result["data_loading"] = data_loading.main(["--out", str(args.out)] + quick)["pipelines"]
    report = markdown(meta, rows, train)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or meta["device"]
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(report)
    print(report)
    return result


if __name__ == "__main__":
    main()
