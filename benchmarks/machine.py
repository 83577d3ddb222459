"""The machine a benchmark ran on, as a file-name slug (shared by :mod:`benchmarks.run`,
:mod:`benchmarks.data_loading` and :mod:`benchmarks.device_check`)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

__all__ = ["device_name"]


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
