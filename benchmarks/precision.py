r"""Accuracy of the loss per input dtype: ``python -m benchmarks.precision [--device cuda]``.

For each similarity kernel as the paper's models train it (max-MIL symmetric, EZ-VSL: tau 0.03;
eq. 1 one direction, reference model: tau 0.07, epsilon 0.65, beta 0.03; margin -0.2 both) and
each input dtype (float16, bfloat16, float32), :class:`marginnce_loss.LocalizationMarginNCE`'s
loss and gradients on features of that dtype are compared with the same loss in float64 on the
original float64 features:

- ``loss``: ``|L_dtype - L_64| / |L_64|``;
- ``grad``: ``max |g_dtype - g_64| / max |g_64|`` over both inputs' gradients (the worse of the two);
- ``input``: ``|L_64(rounded features) - L_64| / |L_64|``, the part of ``loss`` that the rounding of
  the features to the dtype causes by itself, before any kernel runs: no kernel can do better
  without features of higher precision.

``loss`` is the whole error a user sees: the rounding of the features to the dtype, the matrix
product's output rounding in that dtype, and the float32 element-wise steps and reductions.
Features: unit-length over ``C`` (float64), ``C`` in (64, 512), ``H x W = 7 x 7`` (ResNet-18's map),
``B`` in (32, 128), "random" (an untrained model) and "aligned" (each clip's audio matches a
blob of its own image, ``ALIGNED_STRENGTH``: a partly trained model whose loss has not saturated),
``SEEDS`` seeds each. Reported per kernel and dtype: the median and the maximum over all cases,
and the range of the float64 loss values.

Writes ``benchmarks/results/precision-<device>.json`` (every case) and ``.md`` (the table) and
prints the table. ``tests/test_functional.py::test_loss_accuracy_per_dtype`` pins the bounds
``docs/the-loss.md`` states on a subset of these cases.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from marginnce_loss import LocalizationMarginNCE

RESULTS = Path(__file__).resolve().parent / "results"
KERNELS = {
    "max-MIL": dict(similarity="max", tau=0.03, symmetric=True),
    "eq1": dict(similarity="thresholded", tau=0.07, epsilon=0.65, beta=0.03, symmetric=False),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MARGIN = -0.2
SEEDS = 5
BATCHES = (32, 128)
CHANNELS = (64, 512)
H, W = 7, 7
KINDS = ("random", "aligned")
ALIGNED_STRENGTH = 0.3


def features(kind: str, b: int, c: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features, unit-length over ``C``: ``"random"`` or ``"aligned"`` (audio matches a blob of its image)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    aud = F.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    if kind == "random":
        return F.normalize(noise, dim=1), aud
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cy = torch.rand(b, generator=g, dtype=torch.float64) * (h - 1)
    cx = torch.rand(b, generator=g, dtype=torch.float64) * (w - 1)
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * (0.2 * max(h, w)) ** 2))
    img = noise / math.sqrt(c) + ALIGNED_STRENGTH * blob[:, None] * aud[:, :, None, None]
    return F.normalize(img, dim=1), aud


def _loss_and_grads(loss: LocalizationMarginNCE, img: torch.Tensor, aud: torch.Tensor):
    img, aud = img.detach().requires_grad_(), aud.detach().requires_grad_()
    value = loss(img, aud)
    gi, ga = torch.autograd.grad(value, (img, aud))
    return value.detach().double(), gi.double(), ga.double()


def relative_errors(
    kernel: str, dtype: torch.dtype, img64: torch.Tensor, aud64: torch.Tensor, backend: str = "eager"
) -> dict[str, float]:
    """``{"loss", "grad", "input", "value"}``: relative errors of ``kernel`` on ``dtype`` features
    against float64 (see the module docstring) and the float64 loss value."""
    loss = LocalizationMarginNCE(margin=MARGIN, backend=backend, **KERNELS[kernel])  # type: ignore[arg-type]
    ref = _loss_and_grads(loss, img64, aud64)
    got = _loss_and_grads(loss, img64.to(dtype), aud64.to(dtype))
    rounded = loss(img64.to(dtype).double(), aud64.to(dtype).double()).detach()
    grad = max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(got[1:], ref[1:]))
    return {
        "loss": float((got[0] - ref[0]).abs() / ref[0].abs()),
        "grad": grad,
        "input": float((rounded - ref[0]).abs() / ref[0].abs()),
        "value": float(ref[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="torch device of the features")
    parser.add_argument("--backend", default="eager", choices=("eager", "compiled", "auto"), help="kernel backend")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases: list[dict[str, Any]] = []
    for kernel in KERNELS:
        for name, dtype in DTYPES.items():
            for kind in KINDS:
                for b in BATCHES:
                    for c in CHANNELS:
                        for seed in range(SEEDS):
                            img, aud = features(kind, b, c, H, W, seed)
                            err = relative_errors(kernel, dtype, img.to(device), aud.to(device), args.backend)
                            cases.append(
                                {"kernel": kernel, "dtype": name, "features": kind, "B": b, "C": c, "seed": seed, **err}
                            )
    rows = []
    for kernel in KERNELS:
        for name in DTYPES:
            sel = [c for c in cases if c["kernel"] == kernel and c["dtype"] == name]
            rows.append(
                {
                    "kernel": kernel,
                    "dtype": name,
                    "cases": len(sel),
                    "loss_median": statistics.median(c["loss"] for c in sel),
                    "loss_max": max(c["loss"] for c in sel),
                    "grad_median": statistics.median(c["grad"] for c in sel),
                    "grad_max": max(c["grad"] for c in sel),
                    "input_median": statistics.median(c["input"] for c in sel),
                    "input_max": max(c["input"] for c in sel),
                    "value_min": min(c["value"] for c in sel),
                    "value_max": max(c["value"] for c in sel),
                }
            )
    tag = f"{device.type}-{args.backend}"
    header = (
        f"# Loss accuracy per input dtype ({tag})\n\n"
        f"`python -m benchmarks.precision --device {args.device} --backend {args.backend}` on "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + f". Relative error against float64 on the original float64 features; C in {CHANNELS}, "
        f"H x W = {H}x{W}, B in {BATCHES}, {' and '.join(KINDS)} features, {SEEDS} seeds each "
        f"({len(cases) // len(rows)} cases per row); margin {MARGIN}. `input`: the error the rounding of "
        "the features alone causes (float64 loss on the rounded features).\n\n"
        "| kernel | dtype | loss: median | loss: max | of which input: max | gradient: median | gradient: max "
        "| float64 loss values |\n"
        "|:---|:---|---:|---:|---:|---:|---:|:---:|\n"
    )
    table = header + "".join(
        f"| {r['kernel']} | {r['dtype']} | {r['loss_median']:.1e} | {r['loss_max']:.1e} | {r['input_max']:.1e} | "
        f"{r['grad_median']:.1e} | {r['grad_max']:.1e} | {r['value_min']:.3g} to {r['value_max']:.3g} |\n"
        for r in rows
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"precision-{tag}.md").write_text(table, encoding="utf-8")
    (RESULTS / f"precision-{tag}.json").write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "device": str(device),
                "backend": args.backend,
                "summary": rows,
                "cases": cases,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
