"""Checkpoint IO: the one home of writing a run's checkpoint and of "load a checkpoint and build its model".

A checkpoint (``<run>/checkpoint.pt``, written by :func:`marginnce_kit.train.train` every epoch) is a
dict of plain tensors and containers: ``{"model": state dict, "optimizer": state dict, "epoch": int,
"config": asdict(TrainConfig), "history": [epoch records], "selection": "last" | "best_val",
"marginnce_loss": the package version that wrote it}``, read with ``torch.load(..., weights_only=True)``
(a downloaded checkpoint cannot run code).

Checkpoints from elsewhere: weights saved through a ``DistributedDataParallel`` wrapper (``module.`` keys)
or from a ``torch.compile``-d model (``_orig_mod.`` keys) load as the plain model's
(``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``); a config field this version does
not know is refused in one line naming the fields and the version that wrote the file; a file that is cut
short is told apart from one ``weights_only`` refuses (:class:`~marginnce_kit.io.TorchFileError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..cli import UsageError
from ..io import TorchFileError, atomic_save, load_weights_only
from ..models import AudioVisualModel, build_model
from .config import ConfigError, TrainConfig, UnknownConfigFieldsError

__all__ = ["CHECKPOINT_NAME", "CheckpointNotFoundError", "save_checkpoint", "load_checkpoint", "load_model",
           "model_state", "checkpoint_config"]

CHECKPOINT_NAME = "checkpoint.pt"
#: key prefixes of weights saved through a wrapper: DistributedDataParallel / DataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointNotFoundError(UsageError, FileNotFoundError):
    """``resume`` without a checkpoint in ``out``, or a checkpoint path that does not exist."""


def _version() -> str:
    from marginnce_loss import __version__

    return str(__version__)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically, with the writing version."""
    atomic_save({**state, "marginnce_loss": _version()}, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`marginnce_kit.train.train`, read with ``weights_only=True`` (tensors
    and plain containers only).

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        ConfigError: the file is cut short or not a checkpoint; holds objects ``weights_only`` refuses
            (the message says which); or lacks the keys ``model``, ``config``, ``epoch``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint: no such file {str(path)!r}",
                                      "pass the checkpoint.pt of a marginnce_kit.train run folder")
    try:
        state = load_weights_only(path, "checkpoint", map_location)
    except TorchFileError as e:
        raise ConfigError(e.problem, "pass a checkpoint.pt written by marginnce_kit.train") from e
    if not isinstance(state, dict) or not {"model", "config", "epoch"} <= set(state):
        raise ConfigError(f"checkpoint {str(path)!r}: expected a marginnce_kit.train checkpoint (keys model, config, "
                          f"epoch), got {sorted(state) if isinstance(state, dict) else type(state).__name__}")
    return state


def model_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's model weights under the plain model's names: a ``module.`` (DDP, DataParallel) or
    ``_orig_mod.`` (``torch.compile``) prefix on every key is removed, as
    ``consume_prefix_in_state_dict_if_present`` does (a copy; the checkpoint is left as it is)."""
    weights = dict(state["model"])
    for prefix in WRAPPER_PREFIXES:
        if weights and all(k.startswith(prefix) for k in weights):
            consume_prefix_in_state_dict_if_present(weights, prefix)
    return weights


def checkpoint_config(state: dict[str, Any], path: str | os.PathLike[str]) -> TrainConfig:
    """The checkpoint's :class:`TrainConfig`.

    Raises:
        ConfigError: a config field this version does not know, in one line naming the fields, the
            version that wrote the checkpoint and this one; or a value this version refuses.
    """
    saved = state["config"]
    if not isinstance(saved, dict):
        raise ConfigError(f"checkpoint {str(path)!r}: expected its config as a dict, got {type(saved).__name__}",
                          "pass a checkpoint.pt written by marginnce_kit.train")
    try:
        return TrainConfig.from_dict(saved)
    except UnknownConfigFieldsError as e:
        version = state.get("marginnce_loss")
        wrote = f"marginnce-loss {version}" if version else "a version that did not record itself"
        raise ConfigError(f"checkpoint {str(path)!r}: config fields {e.fields} unknown to this version (written by "
                          f"{wrote}; this is marginnce-loss {_version()})",
                          "load it with the version that wrote it, or drop those fields from state['config']") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"checkpoint {str(path)!r}: its config is refused by this version ({e})",
                          "load it with the version that wrote it") from e


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu"
               ) -> tuple[AudioVisualModel, TrainConfig, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on ``device``: ``(model, its TrainConfig, the checkpoint)``.

    Every weight comes from the checkpoint (the ImageNet weights of a ``pretrained`` run are not read);
    weights saved through a DDP or ``torch.compile`` wrapper load as the plain model's (:func:`model_state`).

    Raises:
        CheckpointNotFoundError, ConfigError: as :func:`load_checkpoint` and :func:`checkpoint_config`;
            ConfigError also for weights that do not fit the config's model (naming the missing and the
            unexpected keys).
    """
    state = load_checkpoint(path)
    config = checkpoint_config(state, path)
    model = build_model(config.model_config(), load_pretrained=False)
    try:
        model.load_state_dict(model_state(state))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(f"checkpoint {str(path)!r}: its weights do not fit its config's model "
                          f"({' '.join(x.strip() for x in first[:3])[:300]})",
                          "pass a checkpoint written by marginnce_kit.train, unmodified") from e
    return model.to(torch.device(device)).eval(), config, state
