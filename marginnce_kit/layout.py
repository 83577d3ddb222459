"""The on-disk layouts, the one home of their folder and file names: a prepared data set, and a run folder
(:class:`RunLayout`).

    <root>/frames/<id>.jpg   the clip's frame (JPEG)
    <root>/audio/<id>.wav    the clip's audio (16 kHz mono PCM-16)

written by ``python -m marginnce_kit.prepare`` (real videos) and :mod:`marginnce_kit.data.synthetic`, read by
:class:`marginnce_kit.data.AudioVisualDataset`. This is the layout of the LVS / EZ-VSL data loaders
(``datasets.py`` of hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb, one frame and
one wav per clip id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FRAMES_DIR", "AUDIO_DIR", "FRAME_SUFFIX", "AUDIO_SUFFIX", "frame_path", "audio_path", "make_dirs",
           "RunLayout"]

FRAMES_DIR = "frames"
AUDIO_DIR = "audio"
FRAME_SUFFIX = ".jpg"
AUDIO_SUFFIX = ".wav"


def frame_path(root: str | os.PathLike[str], clip_id: str) -> Path:
    """``root/frames/<clip_id>.jpg``."""
    return Path(root) / FRAMES_DIR / f"{clip_id}{FRAME_SUFFIX}"


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
