"""What the benchmarks share (:mod:`benchmarks.run`, :mod:`benchmarks.data_loading`,
:mod:`benchmarks.device_check`): the machine as a file-name slug, and how results are written."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["device_name", "write_results", "write_text_atomic", "matmul_settings"]


def device_name(device: torch.device) -> str:
    """``cuda-<gpu name>`` or ``cpu-<cpu model>``, lower-case, for file names."""
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        raw = platform.processor() or "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    raw = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        raw = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@.*$", " ", raw)
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    return f"{device.type}-{slug}"


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a part (a temporary file, then ``os.replace``): a
    process killed while writing leaves the previous version."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: Path, stem: str, result: dict, report: str) -> None:
    """``<out>/<stem>.json`` (every number) and ``<out>/<stem>.md`` (the tables), each written atomically
    (:func:`write_text_atomic`); ``out`` is created."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text_atomic(out / f"{stem}.md", report)


def matmul_settings() -> dict[str, Any]:
    """The float32 / reduced-precision matrix-product settings this process runs with (PyTorch's defaults unless
    changed: ``highest`` precision, TF32 off for matmul and on for cuDNN convolutions, bf16 / fp16 reduced-precision
    reductions allowed); the package and the kit change none of them."""
    matmul = torch.backends.cuda.matmul
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cuda_matmul_allow_bf16_reduced_precision_reduction": bool(matmul.allow_bf16_reduced_precision_reduction),
        "cuda_matmul_allow_fp16_reduced_precision_reduction": bool(matmul.allow_fp16_reduced_precision_reduction),
    }
