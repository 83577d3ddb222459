"""The on-disk layouts, the one home of their folder and file names: a prepared data set, and a run folder
(:class:`RunLayout`).

    <root>/frames/<id>.jpg   the clip's frame: JPEG (the default), or <id>.png (PNG) in a png root
    <root>/audio/<id>.wav    the clip's audio (16 kHz mono PCM-16)
    <root>/prepare_report.json   what ``prepare`` did (real videos only), its ``frame_format`` among it

written by ``python -m marginnce_kit.prepare`` (real videos) and :mod:`marginnce_kit.data.synthetic`, read by
:class:`marginnce_kit.data.AudioVisualDataset`. This is the layout of the LVS / EZ-VSL data loaders
(``datasets.py`` of hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb, one frame and
one wav per clip id); FNAC's VGGSound loaders read ``frames/<id>.png`` instead, hence the png format
(``prepare --frame-format png``, ``patches/README.md``).

A root holds frames of one format, :data:`FRAME_FORMATS`: the one its ``prepare_report.json`` records
(``"frame_format"``), ``"jpg"`` when it has no report (a synthetic root, a root of ``prepare_clip`` calls) or
the report predates the key (:func:`root_frame_format`). ``prepare``, ``prepare --verify`` and the dataset all
name a frame with :func:`frame_path`, the one place that maps a format to a file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .io import read_json

__all__ = ["FRAMES_DIR", "AUDIO_DIR", "FRAME_SUFFIX", "AUDIO_SUFFIX", "FRAME_FORMATS", "DEFAULT_FRAME_FORMAT",
           "PREPARE_REPORT", "check_frame_format", "frame_suffix", "frame_path", "root_frame_format", "audio_path",
           "make_dirs", "RunLayout"]

FRAMES_DIR = "frames"
AUDIO_DIR = "audio"
AUDIO_SUFFIX = ".wav"

#: The frame file formats of a prepared root, each its file suffix (``.<format>``): ``jpg`` (JPEG, what EZ-VSL,
#: SLAVC and LVS read) and ``png`` (lossless PNG, what FNAC's VGGSound loaders read).
FRAME_FORMATS = ("jpg", "png")
DEFAULT_FRAME_FORMAT = "jpg"
#: The default format's suffix (``.jpg``).
FRAME_SUFFIX = f".{DEFAULT_FRAME_FORMAT}"
#: ``prepare``'s report in a prepared root (:mod:`marginnce_kit.prepare`).
PREPARE_REPORT = "prepare_report.json"


def check_frame_format(frame_format: object, name: str = "frame_format") -> str:
    """``frame_format`` checked: one of :data:`FRAME_FORMATS`.

    Raises:
        ValueError: anything else (the message names ``name``, the choices and the value).
    """
    if not isinstance(frame_format, str) or frame_format not in FRAME_FORMATS:
        raise ValueError(f"{name}: expected one of {', '.join(FRAME_FORMATS)}, got {frame_format!r}")
    return frame_format


def frame_suffix(frame_format: str = DEFAULT_FRAME_FORMAT) -> str:
    """The file suffix of ``frame_format`` frames: ``.jpg`` or ``.png`` (``ValueError`` for another format)."""
    return f".{check_frame_format(frame_format)}"


def frame_path(root: str | os.PathLike[str], clip_id: str, frame_format: str = DEFAULT_FRAME_FORMAT) -> Path:
    """``root/frames/<clip_id>.jpg`` (``frame_format="png"``: ``.png``)."""
    return Path(root) / FRAMES_DIR / f"{clip_id}{frame_suffix(frame_format)}"


def root_frame_format(root: str | os.PathLike[str]) -> str:
    """The frame format of the prepared root ``root``: ``"frame_format"`` of ``root/prepare_report.json``;
    ``"jpg"`` when there is no report, or its report has no such key (reports before ``--frame-format``).

    Raises:
        ValueError: the report is not JSON (:class:`marginnce_kit.io.TextFileError`), not an object, or records
            a format that is not one of :data:`FRAME_FORMATS`.
    """
    report_file = Path(root) / PREPARE_REPORT
    if not report_file.is_file():
        return DEFAULT_FRAME_FORMAT
    report = read_json(report_file, "prepare report")
    if not isinstance(report, dict):
        raise ValueError(f"{report_file}: expected a JSON object (prepare's report), got {type(report).__name__}")
    return check_frame_format(report.get("frame_format", DEFAULT_FRAME_FORMAT), f"{report_file}: frame_format")


def audio_path(root: str | os.PathLike[str], clip_id: str) -> Path:
    """``root/audio/<clip_id>.wav``."""
    return Path(root) / AUDIO_DIR / f"{clip_id}{AUDIO_SUFFIX}"


def make_dirs(root: str | os.PathLike[str]) -> None:
    """Create ``root/frames`` and ``root/audio`` (and ``root``) if missing."""
    for name in (FRAMES_DIR, AUDIO_DIR):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class RunLayout:
    """The files of a run folder (``python -m marginnce_kit.train --out ROOT``; a study's
    ``<out>/runs/<name>/``)::

        config.json      the run's settings as they apply, and its provenance
        checkpoint.pt    the last epoch (model, optimizer, epoch, config, history); --resume reads it
        best_val.pt      the best epoch on the validation split (with --val-list), upstream's best.pth
        metrics.jsonl    one JSON line per epoch, then the final evaluation
        final.json       the final record (evaluations of the last and the best_val weights)
        curves.png       loss, learning rate and evaluations against the epoch
        tensorboard/     TensorBoard scalars (--tensorboard)
        result.json      a study run's cached evaluations (studies only)
    """

    root: Path

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.pt"
    BEST_VAL = "best_val.pt"
    METRICS = "metrics.jsonl"
    FINAL = "final.json"
    CURVES = "curves.png"
    TENSORBOARD = "tensorboard"
    RESULT = "result.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.root / self.CHECKPOINT

    @property
    def best_val(self) -> Path:
        return self.root / self.BEST_VAL

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def final(self) -> Path:
        return self.root / self.FINAL

    @property
    def curves(self) -> Path:
        return self.root / self.CURVES

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def result(self) -> Path:
        return self.root / self.RESULT

    def run_files(self) -> tuple[Path, ...]:
        """Every file and folder a run writes (``result.json`` aside: a study's)."""
        return (self.config, self.checkpoint, self.best_val, self.metrics, self.final, self.curves, self.tensorboard)

    def held(self) -> list[str]:
        """The names of the files that mark the folder as holding a run (config, checkpoints, metrics, final)."""
        marks = (self.config, self.checkpoint, self.best_val, self.metrics, self.final)
        return [p.name for p in marks if p.exists()]
