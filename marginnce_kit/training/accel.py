"""The explicit GPU switches of a run (issue 25), each off by default and refused where it cannot run:

* ``loss_cuda_graphs`` (``--loss-cuda-graphs``): the loss region (the criterion's forward, and through
  ``torch.compile``'s autograd the backward it records) compiled with ``mode="reduce-overhead"``, which replays it
  as CUDA graphs, so the loss's many small kernels cost one launch; on CUDA only (CUDA graphs capture CUDA work:
  a config that asks for it with ``device="cpu"`` is refused when made). Unverified on a GPU until the device
  check has timed it (``python -m benchmarks.device_check``); the numbers are those of the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_loss_region", "reduce_overhead", "LOSS_REGION_MODE"]

#: ``torch.compile`` mode of the loss region: CUDA graphs over the compiled graph (cudagraph trees).
LOSS_REGION_MODE = "reduce-overhead"


def reduce_overhead(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn, mode="reduce-overhead", dynamic=False)``: ``fn`` replayed as CUDA graphs."""
    return torch.compile(fn, mode=LOSS_REGION_MODE, dynamic=False)


def compile_loss_region(model: nn.Module, compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
                        ) -> nn.Module:
    """Replace ``model.criterion``'s call by its compiled version (default: ``torch.compile(mode="reduce-overhead",
    dynamic=False)``; ``compiler`` for tests); returns ``model``.

    A criterion module (:class:`marginnce_loss.LocalizationMarginNCE`) keeps its place and state-dict keys: its
    ``forward`` is what is compiled; a plain function (LVS's loss) is replaced by its compiled version.
    Compiled kernels inside it (``backend="compiled"``) are traced into the same graph.

    Raises:
        TypeError: ``model`` has no callable ``criterion``.
    """
    build = compiler if compiler is not None else reduce_overhead
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, nn.Module):
        criterion.forward = build(criterion.forward)  # type: ignore[method-assign]
    elif callable(criterion):
        model.criterion = build(criterion)  # type: ignore[assignment]  # a function attribute, not a submodule
    else:
        raise TypeError(f"model.criterion: expected the loss (a module or a function), got {type(criterion).__name__}")
    return model
