"""A run's settings: :class:`TrainConfig`, the one source of the trainer's flags, defaults, help and checks.

Every field carries its command-line help in ``field(metadata=...)``; :func:`add_config_arguments`
derives the ``python -m marginnce_kit.train`` options from the fields (flag ``--<name-with-dashes>``,
the field's default, ``choices`` / ``type`` / negated ``--no-...`` flags from the metadata) and
:func:`check_config` checks a config in one place (types, ranges, choices; the model's own fields
through :class:`marginnce_kit.models.ModelConfig`, which checks them once at construction).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .._checks import check_bool, check_choice, check_finite, check_int, check_nonnegative, check_positive, check_str
from ..cli import UsageError, one_line
from ..data.datasets import DataError
from ..layout import AUDIO_DIR, FRAMES_DIR
from ..models import BACKBONES, IMAGE_SIZES, MODELS, NORMS, ModelConfig

__all__ = ["TrainConfig", "ConfigError", "AUTO_WORKERS", "auto_workers", "DEVICES", "ANNOTATION_FORMATS", "RESUME_INDEPENDENT", "RECORD_KEYS",
           "MODEL_FIELDS", "add_config_arguments", "add_data_arguments", "add_field_argument", "config_argv",
           "config_from_args", "check_config",
           "check_paths", "effective_config", "data_error", "fraction_or_count"]

DEVICES = ("cpu", "cuda")
ANNOTATION_FORMATS = ("vggss", "flickr")

#: Config fields that do not change what a run computes; ``--resume`` accepts a different value
#: (``visual_weights``: a resumed run reads every weight from the checkpoint).
RESUME_INDEPENDENT = ("workers", "visual_weights")

#: Keys of ``config.json`` that are a record about the run, not config fields.
RECORD_KEYS = ("provenance",)

#: Fields checked by :class:`marginnce_kit.models.ModelConfig` (the model's own settings).
MODEL_FIELDS = ("model", "margin", "backbone", "dim", "width", "pretrained", "norm", "visual_weights")

#: Data fields (``add_data_arguments``): shared with ``python -m marginnce_kit.evaluate``.
#: Per-step learning-rate schedules (:func:`marginnce_kit.training.schedule.lr_at_step`).
LR_SCHEDULES = ("constant", "cosine")

DATA_FIELDS = ("train_root", "train_list", "test_root", "test_list", "annotations", "annotation_format")


class ConfigError(UsageError, ValueError):
    """A config value that cannot run here (a ``ValueError`` to library callers; one line from the CLI)."""


#: ``workers`` value (``--workers auto``) that :func:`effective_config` resolves with :func:`auto_workers`.
AUTO_WORKERS = -1


def auto_workers(device: str) -> int:
    """DataLoader workers of ``--workers auto``: on CUDA ``min(8, c - 1)`` with ``c`` the CPU cores this
    process may use divided by torchrun's ``LOCAL_WORLD_SIZE`` (the ranks sharing the machine), so the
    GPU is fed while one core per rank stays with the training loop; on CPU 0 (the step's own
    intra-op threads already use every core)."""
    if device != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_rank - 1))


def int_or_auto(text: str) -> int:
    """``"auto"`` -> :data:`AUTO_WORKERS`, ``"3"`` -> 3 (the ``--workers`` parser)."""
    return AUTO_WORKERS if text == "auto" else int(text)


def fraction_or_count(text: str) -> float | int:
    """``"0.01"`` -> the fraction 0.01, ``"3"`` -> the count 3 (``DataFailureTracker``'s two forms)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A config field: ``default`` plus its command-line metadata.

    ``meta`` keys: ``choices`` (tuple), ``minimum`` (int fields), ``check`` (``"positive"`` /
    ``"nonnegative"`` for floats), ``flag`` (the option name when it is not ``--<field>``; for a
    ``True`` bool the ``--no-...`` switch), ``metavar``, ``type`` (the argparse parser), ``cli``
    (``False``: not a command-line option)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside the checkpoint.

    ``batch_size`` is the global batch (split evenly over DDP ranks); ``norm`` picks the backbones'
    normalisation (``"batch"`` or the batch-independent ``"group"``); ``sync_batchnorm`` converts
    BatchNorm to SyncBatchNorm under DDP on CUDA; ``gather_distributed`` gives ``ezvsl`` and
    ``reference`` the negatives of every rank under DDP (see :mod:`marginnce_kit.train`)."""

    model: str = _f("reference", "the method (Table 5's rows)", choices=MODELS)
    margin: float = _f(-0.2, "marginNCE margin m (0: InfoNCE)")
    backbone: str = _f("resnet18", "encoders (small, patch8: CPU-sized)", choices=BACKBONES)
    dim: int = _f(512, "projection width (ezvsl, reference)", minimum=1)
    width: int = _f(64, "first-stage width of --backbone small / patch8", minimum=2)
    pretrained: bool = _f(False, "ImageNet weights for the visual ResNet-18 (torchvision's cache, downloaded when "
                                 "absent, or --visual-weights)")
    train_root: str = _f("", "folder with frames/<id>.jpg and audio/<id>.wav")
    train_list: str = _f("", "training ids, one per line (e.g. vggss_144k.txt)")
    test_root: str = _f("", "test folder (frames/, audio/)")
    test_list: str = _f("", "test ids (e.g. vggss_test.csv)")
    annotations: str = _f("", "vggss.json, or the SoundNet-Flickr XML folder")
    annotation_format: str = _f("vggss", "annotation format", choices=ANNOTATION_FORMATS)
    epochs: int = _f(20, "training epochs", minimum=1)
    batch_size: int = _f(128, "global batch (all ranks together)", minimum=2)
    lr: float = _f(1e-4, "Adam learning rate", check="positive")
    weight_decay: float = _f(1e-4, "Adam weight decay", check="nonnegative")
    seed: int = _f(0, "run seed (initialisation, order, augmentation)", minimum=0)
    workers: int = _f(-1, "DataLoader worker processes per rank; auto (or -1): min(8, this rank's CPU cores - 1) "
                          "on CUDA, 0 on CPU (where the step itself uses every core)", minimum=-1,
                      type=int_or_auto, metavar="N|auto")
    device: str = _f("cpu", "where to train", choices=DEVICES)
    amp: bool = _f(True, "no bfloat16 autocast on CUDA", flag="--no-amp")
    max_failures: float = _f(0.01, "stop when more clips of a split are broken or missing than this fraction "
                                   "(with a decimal point, in [0, 1)) or count (an integer)", type=fraction_or_count)
    eval_every: int = _f(0, "evaluate every N epochs (0: once, at the end)", minimum=0)
    cache: bool = _f(False, "keep decoded clips in memory")
    gather_distributed: bool = _f(True, "under torchrun: negatives from the local batch only", flag="--no-gather")
    limit_steps: int = _f(0, "> 0: at most this many batches per epoch", minimum=0)
    norm: str = _f("batch", "normalisation layers: batch (BatchNorm, the paper's) or group (GroupNorm, "
                            "batch-independent)", choices=NORMS)
    sync_batchnorm: bool = _f(True, "under torchrun on CUDA: keep per-rank BatchNorm statistics",
                              flag="--no-sync-batchnorm")
    visual_weights: str = _f("", "with --pretrained: a local torchvision ResNet-18 state dict (no network needed)",
                             metavar="PATH")
    lr_schedule: str = _f("constant", "per-step learning rate: constant, or cosine decay to 0 at the last step",
                          choices=LR_SCHEDULES)
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps", minimum=0)
    image_size: int = _f(224, "image input side in pixels: 224 (the protocol), or 112 with a compact backbone (its "
                              "image stride halves: 7 x 7 maps either way; scored at 224 all the same)",
                         choices=IMAGE_SIZES)

    def model_config(self, distributed: bool = False) -> ModelConfig:
        """The model's settings (checked by :class:`ModelConfig`); ``distributed``: gather negatives
        across ranks when ``gather_distributed``."""
        return ModelConfig(model=self.model, margin=self.margin, backbone=self.backbone, dim=self.dim,
                           pretrained=self.pretrained, width=self.width, norm=self.norm,
                           gather_distributed=distributed and self.gather_distributed,
                           visual_weights=self.visual_weights, image_size=self.image_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From ``asdict(config)`` or ``config.json`` (whose ``provenance`` record is not a config field);
        keys missing there take today's defaults.

        Raises:
            ValueError: a key that is not a config field.
        """
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RECORD_KEYS}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        return cls(**d)


def _flag(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _add(p: argparse.ArgumentParser | argparse._ArgumentGroup, f: Field, **override: Any) -> None:
    """The option of field ``f`` (``override``: argparse keywords replacing the derived ones)."""
    meta, default = f.metadata, f.default
    assert default is not MISSING
    kw: dict[str, Any] = {"help": meta["help"]}
    if f.type in ("bool", bool):
        kw.update(dest=f.name, action="store_false" if default else "store_true")
    else:
        kw.update(default=default)
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        kw["type"] = meta.get("type", {"int": int, "float": float}.get(str(f.type), str))
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
    kw.update(override)
    p.add_argument(_flag(f), **kw)


def _fields() -> dict[str, Field]:
    return {f.name: f for f in fields(TrainConfig)}


def add_field_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **override: Any) -> None:
    """The option of :class:`TrainConfig` field ``name`` with its help, type and choices (``override``:
    argparse keywords replacing the derived ones, e.g. ``default=None`` for an optional override).

    Raises:
        KeyError: ``name`` is not a field of :class:`TrainConfig`.
    """
    _add(p, _fields()[name], **override)


def add_data_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, train: bool = True,
                       required: bool = True) -> None:
    """The data options (``--train-root`` ... ``--annotation-format``). ``train=False`` (evaluation):
    no train split, and ``--annotation-format`` defaults to ``None`` (the checkpoint's). ``required=False``:
    the train split's options are optional too (default ``""``; the studies' real-data switch)."""
    fs = _fields()
    for name in DATA_FIELDS:
        if name.startswith("train_"):
            if train:
                _add(p, fs[name], **(dict(required=True, default=None) if required else {}))
        elif name == "annotation_format" and not train:
            _add(p, fs[name], default=None, help=fs[name].metadata["help"] + " (None: the checkpoint's)")
        else:
            _add(p, fs[name])


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, in field order (the data options via
    :func:`add_data_arguments`), with the field's default and help."""
    for name, f in _fields().items():
        if name in DATA_FIELDS:
            if name == DATA_FIELDS[0]:
                add_data_arguments(p)
            continue
        _add(p, f)


def config_argv(config: TrainConfig) -> list[str]:
    """The command line of ``config``: the options (as :func:`add_config_arguments` derives them) of
    every field that differs from its default, plus ``--train-root`` / ``--train-list`` (required).
    ``config_from_args(parse_args(config_argv(c) + ["--out", ...]))`` equals ``c``."""
    argv: list[str] = []
    for f in fields(config):
        v = getattr(config, f.name)
        if v == f.default and f.name not in ("train_root", "train_list"):
            continue
        if str(f.type) == "bool":
            argv.append(_flag(f))  # a switch: present means "not the default"
        else:
            argv += [_flag(f), str(v)]
    return argv


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (each field from the attribute of its name)."""
    return TrainConfig(**{name: getattr(args, name) for name in _fields()})


def check_config(c: TrainConfig, world_size: int = 1) -> None:
    """Check every field of ``c`` (the one place a run's settings are checked).

    Raises:
        TypeError: ``c`` is not a :class:`TrainConfig`, or a field of the wrong type (a str, bool
            or int field given something else), naming the field, the expected and received value.
        ConfigError: a value out of range or of no choice (a ``ValueError``), or fields that do not
            fit together (evaluation paths, the batch over the ranks).
    """
    if not isinstance(c, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(c).__name__}")
    try:
        _check_fields(c)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for name in ("train_root", "train_list"):
        if not getattr(c, name):
            raise ConfigError(f"{name}: expected a path, got nothing")
    if c.test_list and not (c.test_root and c.annotations):
        raise ConfigError(f"test_list: evaluation also needs test_root and annotations, got test_root={c.test_root!r} "
                          f"and annotations={c.annotations!r}")
    if c.batch_size % world_size:
        raise ConfigError(f"batch_size: expected a multiple of the world size {world_size} (the global batch is split "
                          f"evenly over the ranks), got {c.batch_size}")
    if c.model == "lvs" and world_size > 1 and c.batch_size // world_size < 2:
        raise ConfigError(f"batch_size: lvs takes its negatives from the rank-local batch and needs >= 2 clips per "
                          f"rank, got {c.batch_size} over {world_size} ranks")


def _check_fields(c: TrainConfig) -> None:
    for f in fields(c):
        if f.name in MODEL_FIELDS:
            continue  # ModelConfig's own checks, below
        v, meta, kind = getattr(c, f.name), f.metadata, str(f.type)
        if f.name == "max_failures":
            if not ((isinstance(v, float) and 0.0 <= v < 1.0) or (isinstance(v, int) and not isinstance(v, bool)
                                                                    and v >= 0)):
                raise ValueError(f"max_failures: expected a fraction in [0, 1) or a count >= 0, got {v!r}")
        elif kind == "bool":
            check_bool(f.name, v)
        elif f.name == "workers" and isinstance(v, int) and not isinstance(v, bool) and v < AUTO_WORKERS:
            raise ValueError(f"workers: expected an int >= 0, or {AUTO_WORKERS} (auto), got {v}")
        elif kind == "int":
            check_int(f.name, v, meta.get("minimum"))
        elif kind == "float":
            {"positive": check_positive, "nonnegative": check_nonnegative}.get(meta.get("check", ""),
                                                                               check_finite)(f.name, v)
        elif "choices" in meta:
            check_choice(f.name, v, meta["choices"])
        else:
            check_str(f.name, v)
    c.model_config()  # model, margin, backbone, dim, width, pretrained, norm, visual_weights


def effective_config(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """``(config as it applies on config.device, {field: requested value} of what did not apply)``:
    ``amp`` (bfloat16 autocast) is CUDA-only; ``sync_batchnorm`` is CUDA-only and needs ``norm="batch"``;
    ``workers=AUTO_WORKERS`` becomes :func:`auto_workers`'s count (a resolved value, not a refusal: not
    listed in the second item)."""
    on_cuda = config.device == "cuda"
    applied = {"amp": config.amp and on_cuda,
               "sync_batchnorm": config.sync_batchnorm and on_cuda and config.norm == "batch"}
    not_applied = {k: getattr(config, k) for k, v in applied.items() if getattr(config, k) != v}
    workers = auto_workers(config.device) if config.workers == AUTO_WORKERS else config.workers
    return replace(config, **applied, workers=workers), not_applied


def check_paths(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for a data path given on the command line that does not exist
    (relative paths are read from the working directory)."""
    data_fix = "pass a folder written by `python -m marginnce_kit.prepare --out ROOT` (with frames/ and audio/)"
    for name, kind in (("train_root", "root"), ("train_list", "file"), ("test_root", "root"),
                       ("test_list", "file"), ("annotations", "any")):
        value = getattr(args, name, "")
        if not value:
            continue
        path, option = Path(value), "--" + name.replace("_", "-")
        where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        if not path.exists():
            raise UsageError(f"{option}: no such {'folder' if kind == 'root' else 'file'} {value!r}{where}",
                             data_fix if kind == "root" else f"check the path given to {option}")
        if kind == "file" and not path.is_file():
            raise UsageError(f"{option}: expected a file, got the folder {value!r}",
                             f"check the path given to {option}")
        if kind == "root":
            missing = [d for d in (FRAMES_DIR, AUDIO_DIR) if not (path / d).is_dir()]
            if missing:
                raise UsageError(f"{option}: {value!r} has no {' and no '.join(d + '/' for d in missing)} folder",
                                 data_fix)


def data_error(e: DataError) -> UsageError:
    """The one-line form of a :class:`marginnce_kit.data.DataError` (too many broken clips), with the fix."""
    return UsageError(one_line(str(e)),
                      "drop these ids from the list (`python -m marginnce_kit.prepare --verify ROOT --ids LIST "
                      "--write-clean CLEAN` writes the list without them) or raise --max-failures")
