"""A run's settings: :class:`TrainConfig`, frozen and checked once, when it is made.

Every field carries its command-line help in ``field(metadata=...)``; :mod:`marginnce_kit.training.options`
derives the ``python -m marginnce_kit.train`` options from the fields. The checks (types, ranges, choices; the
model's own fields through :class:`marginnce_kit.models.ModelConfig`) run in ``TrainConfig.__post_init__``, so
every config that exists is valid; what depends on the machine (the world size, CUDA) is checked where the run
starts (:func:`marginnce_kit.training.runtime.check_runnable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .._checks import check_bool, check_choice, check_finite, check_int, check_nonnegative, check_positive, check_str
from ..cli import UsageError
from ..models import BACKBONES, IMAGE_SIZES, MODELS, NORMS, ModelConfig

__all__ = ["TrainConfig", "ConfigError", "AUTO_WORKERS", "DEVICES", "ANNOTATION_FORMATS", "LR_SCHEDULES",
           "RESUME_INDEPENDENT", "RECORD_KEYS", "UnknownConfigFieldsError", "MODEL_FIELDS", "DATA_FIELDS", "VAL_FIELDS",
           "int_or_auto", "float_or_auto", "fraction_or_count"]

DEVICES = ("cpu", "cuda")
ANNOTATION_FORMATS = ("vggss", "flickr")
#: Per-step learning-rate schedules (:func:`marginnce_kit.training.schedule.lr_at_step`).
LR_SCHEDULES = ("constant", "cosine")

#: Config fields that do not change what a run computes; ``--resume`` accepts a different value
#: (``visual_weights``: a resumed run reads every weight from the checkpoint).
RESUME_INDEPENDENT = ("workers", "visual_weights")

#: Keys of ``config.json`` that are a record about the run, not config fields.
RECORD_KEYS = ("provenance",)

#: Fields checked by :class:`marginnce_kit.models.ModelConfig` (the model's own settings).
MODEL_FIELDS = ("model", "margin", "backbone", "dim", "width", "pretrained", "norm", "visual_weights", "image_size")

#: Data fields: shared with ``python -m marginnce_kit.evaluate`` and the studies.
DATA_FIELDS = ("train_root", "train_list", "test_root", "test_list", "annotations", "annotation_format")
#: The validation split of checkpoint selection (``best_val``).
VAL_FIELDS = ("val_root", "val_list", "val_annotations")

#: ``workers`` value (``--workers auto``) that :func:`marginnce_kit.training.runtime.effective_config` resolves.
AUTO_WORKERS = -1


class ConfigError(UsageError, ValueError):
    """A config value that cannot run here (a ``ValueError`` to library callers; one line from the CLI)."""


class UnknownConfigFieldsError(ValueError):
    """Keys that are not :class:`TrainConfig` fields (a config written by another version): :attr:`fields`."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"config: unknown keys {fields}")
        self.fields = fields


def int_or_auto(text: str) -> int:
    """``"auto"`` -> :data:`AUTO_WORKERS`, ``"3"`` -> 3 (the ``--workers`` parser)."""
    return AUTO_WORKERS if text == "auto" else int(text)


def float_or_auto(text: str) -> float | None:
    """``"auto"`` -> ``None`` (the method's own value), ``"1e-4"`` -> 0.0001 (the ``--weight-decay`` parser)."""
    return None if text == "auto" else float(text)


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
    ``True`` bool the ``--no-...`` switch), ``metavar``, ``type`` (the argparse parser)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside the checkpoint.

    ``batch_size`` is the global batch (split evenly over DDP ranks); ``norm`` picks the backbones'
    normalisation (``"batch"`` or the batch-independent ``"group"``); ``sync_batchnorm`` converts
    BatchNorm to SyncBatchNorm under DDP on CUDA; ``gather_distributed`` gives ``ezvsl`` and
    ``reference`` the negatives of every rank under DDP (see :mod:`marginnce_kit.train`). ``val_list``
    names a validation split (annotated, not the test split): the run then scores it every epoch and keeps
    the best epoch's weights (``best_val.pt``), as upstream EZ-VSL keeps ``best.pth`` (stoneMo/EZ-VSL@95ff5bf
    ``train.py``; there on the test split). ``weight_decay=None`` is the method's own
    (:data:`marginnce_kit.models.WEIGHT_DECAY`).

    Raises:
        TypeError: a field of the wrong type (a str, bool, int or float field given something else), naming
            the field, the expected and the received value.
        ConfigError: a value out of range or of no choice (also a ``ValueError``), or fields that do not fit
            together (evaluation paths).
    """

    model: str = _f("reference", "the method (Table 5's rows)", choices=MODELS)
    margin: float = _f(-0.2, "marginNCE margin m (0: InfoNCE)")
    backbone: str = _f("resnet18", "encoders (small, patch8: CPU-sized)", choices=BACKBONES)
    dim: int = _f(512, "projection width (ezvsl, reference)", minimum=1)
    width: int = _f(64, "first-stage width of --backbone small / patch8", minimum=2)
    pretrained: bool = _f(False, "ImageNet weights for the visual ResNet-18 (torchvision's cache, downloaded when "
                                 "absent, or --visual-weights)")
    train_root: str = _f("", "folder with frames/<id>.jpg (.png in a --frame-format png root) and audio/<id>.wav")
    train_list: str = _f("", "training ids, one per line (e.g. vggss_144k.txt)")
    test_root: str = _f("", "test folder (frames/, audio/)")
    test_list: str = _f("", "test ids (e.g. vggss_test.csv)")
    annotations: str = _f("", "vggss.json, or the SoundNet-Flickr XML folder")
    annotation_format: str = _f("vggss", "annotation format", choices=ANNOTATION_FORMATS)
    epochs: int = _f(20, "training epochs", minimum=1)
    batch_size: int = _f(128, "global batch (all ranks together)", minimum=2)
    lr: float = _f(1e-4, "Adam learning rate", check="positive")
    weight_decay: float | None = _f(None, "Adam weight decay; auto: the method's upstream value (EZ-VSL 0, LVS and "
                                          "reference 1e-4)", check="nonnegative", type=float_or_auto,
                                    metavar="WD|auto")
    seed: int = _f(0, "run seed (initialisation, order, augmentation)", minimum=0)
    workers: int = _f(AUTO_WORKERS, "DataLoader worker processes per rank; auto (or -1): min(8, this rank's CPU "
                                    "cores - 1) on CUDA, 0 on CPU (where the step itself uses every core)",
                      minimum=-1, type=int_or_auto, metavar="N|auto")
    device: str = _f("cpu", "where to train", choices=DEVICES)
    amp: bool = _f(True, "no bfloat16 autocast on CUDA", flag="--no-amp")
    max_failures: float = _f(0.01, "stop when more clips of a split are broken or missing than this fraction "
                                   "(with a decimal point, in [0, 1)) or count (an integer)", type=fraction_or_count)
    eval_every: int = _f(0, "evaluate the test split every N epochs (0: once, at the end)", minimum=0)
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
    val_root: str = _f("", "validation folder (frames/, audio/; empty: --test-root)")
    val_list: str = _f("", "validation ids, annotated and not in the test list: scored every epoch, the best "
                           "epoch kept as best_val.pt (empty: no best_val selection)")
    val_annotations: str = _f("", "the validation split's annotations (empty: --annotations)")
    decode_device: str = _f("cpu", "where the training frames are decoded: cpu (Pillow, in the loader's workers) "
                                   "or cuda (nvJPEG in the training process, --workers 0; JPEG frames only)",
                            choices=DEVICES)
    loss_cuda_graphs: bool = _f(False, "on CUDA: run the loss region as CUDA graphs (torch.compile "
                                       "mode='reduce-overhead'; unverified until a device check has timed it)")

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in MODEL_FIELDS:
                continue  # ModelConfig's own checks, below
            try:
                _check_field(f.name, getattr(self, f.name), f.metadata, str(f.type))
            except ValueError as e:
                raise ConfigError(str(e)) from e
        try:
            self.model_config()
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if self.test_list and not (self.test_root and self.annotations):
            raise ConfigError(f"test_list: evaluation also needs test_root and annotations, got "
                              f"test_root={self.test_root!r} and annotations={self.annotations!r}")
        if self.val_list and not ((self.val_root or self.test_root) and (self.val_annotations or self.annotations)):
            raise ConfigError(f"val_list: validation also needs val_root (or test_root) and val_annotations (or "
                              f"annotations), got val_root={self.val_root!r} and "
                              f"val_annotations={self.val_annotations!r}")
        if self.decode_device == "cuda" and self.device != "cuda":
            raise ConfigError(f"decode_device: expected 'cpu' with device {self.device!r} (the decoded frames go to "
                              f"the training device), got 'cuda'", "drop --decode-device cuda, or pass --device cuda")
        if self.decode_device == "cuda" and self.workers > 0:
            raise ConfigError(f"workers: expected 0 or auto with decode_device 'cuda' (CUDA cannot run in the loader's "
                              f"worker processes: the frames are decoded in the training process), got {self.workers}",
                              "pass --workers 0, or --decode-device cpu")
        if self.loss_cuda_graphs and self.device != "cuda":
            raise ConfigError(f"loss_cuda_graphs: expected device 'cuda' (CUDA graphs capture CUDA work only), got "
                              f"device {self.device!r}", "drop --loss-cuda-graphs, or pass --device cuda")
        if self.val_list and self.val_list == self.test_list:
            raise ConfigError(f"val_list: expected a validation split other than the test split, got the test list "
                              f"{self.val_list!r}", "pass held-out annotated clips as --val-list, or drop it")

    def model_config(self, distributed: bool = False) -> ModelConfig:
        """The model's settings (checked by :class:`ModelConfig`); ``distributed``: gather negatives
        across ranks when ``gather_distributed``."""
        return ModelConfig(model=self.model, margin=self.margin, backbone=self.backbone, dim=self.dim,
                           pretrained=self.pretrained, width=self.width, norm=self.norm,
                           gather_distributed=distributed and self.gather_distributed,
                           visual_weights=self.visual_weights, image_size=self.image_size)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked like any new config)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From ``asdict(config)`` or ``config.json`` (whose ``provenance`` record is not a config field);
        keys missing there take today's defaults.

        Raises:
            UnknownConfigFieldsError: a key that is not a config field (a ``ValueError`` naming them).
        """
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RECORD_KEYS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnknownConfigFieldsError(unknown)
        return cls(**d)


def _check_field(name: str, v: Any, meta: Any, kind: str) -> None:
    if name == "max_failures":
        if not ((isinstance(v, float) and 0.0 <= v < 1.0) or (isinstance(v, int) and not isinstance(v, bool)
                                                                and v >= 0)):
            raise ValueError(f"max_failures: expected a fraction in [0, 1) or a count >= 0, got {v!r}")
    elif kind == "bool":
        check_bool(name, v)
    elif name == "workers" and isinstance(v, int) and not isinstance(v, bool) and v < AUTO_WORKERS:
        raise ValueError(f"workers: expected an int >= 0, or {AUTO_WORKERS} (auto), got {v}")
    elif kind == "int":
        check_int(name, v, meta.get("minimum"))
    elif kind.startswith("float"):
        if v is None and kind.endswith("None"):
            return
        {"positive": check_positive, "nonnegative": check_nonnegative}.get(meta.get("check", ""), check_finite)(name, v)
    elif "choices" in meta:
        check_choice(name, v, meta["choices"])
    else:
        check_str(name, v)
