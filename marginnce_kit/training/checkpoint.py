"""Checkpoint IO: the one home of writing a run's checkpoint and of "load a checkpoint and build its model".

A checkpoint (``<run>/checkpoint.pt``, written by :func:`marginnce_kit.train.train` every epoch) is a
dict of plain tensors and containers: ``{"model": state dict, "optimizer": state dict, "epoch": int,
"config": asdict(TrainConfig), "history": [epoch records]}``, read with
``torch.load(..., weights_only=True)`` (a downloaded checkpoint cannot run code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..cli import UsageError
from ..io import atomic_save
from ..models import AudioVisualModel, build_model
from .config import ConfigError, TrainConfig

__all__ = ["CHECKPOINT_NAME", "CheckpointNotFoundError", "save_checkpoint", "load_checkpoint", "load_model"]

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointNotFoundError(UsageError, FileNotFoundError):
    """``resume`` without a checkpoint in ``out``, or a checkpoint path that does not exist."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically."""
    atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`marginnce_kit.train.train`, read with ``weights_only=True`` (tensors
    and plain containers only).

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        ConfigError: the file is not a checkpoint ``weights_only`` can read (another format, or one
            holding arbitrary objects), or lacks the keys ``model``, ``config``, ``epoch``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint: no such file {str(path)!r}",
                                      "pass the checkpoint.pt of a marginnce_kit.train run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError (objects refused), RuntimeError (not a torch file)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"checkpoint {str(path)!r}: cannot be read with weights_only=True ({type(e).__name__}: "
                          f"{first})", "pass a checkpoint.pt written by marginnce_kit.train") from e
    if not isinstance(state, dict) or not {"model", "config", "epoch"} <= set(state):
        raise ConfigError(f"checkpoint {str(path)!r}: expected a marginnce_kit.train checkpoint (keys model, config, "
                          f"epoch), got {sorted(state) if isinstance(state, dict) else type(state).__name__}")
    return state


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu"
               ) -> tuple[AudioVisualModel, TrainConfig, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on ``device``: ``(model, its TrainConfig, the checkpoint)``.

    Every weight comes from the checkpoint (the ImageNet weights of a ``pretrained`` run are not read).

    Raises:
        CheckpointNotFoundError, ConfigError: as :func:`load_checkpoint`; ``ValueError`` for a config
            with unknown keys; ``RuntimeError`` from ``load_state_dict`` for weights that do not fit.
    """
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model_config(), load_pretrained=False)
    model.load_state_dict(state["model"])
    return model.to(torch.device(device)).eval(), config, state
