"""What the benchmarks share (:mod:`benchmarks.run`, :mod:`benchmarks.data_loading`,
:mod:`benchmarks.device_check`): the machine as a file-name slug, and how results are written."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import torch

__all__ = ["device_name", "write_results"]


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


def write_results(out: Path, stem: str, result: dict, report: str) -> None:
    """``<out>/<stem>.json`` (every number) and ``<out>/<stem>.md`` (the tables); ``out`` is created."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report)
