"""The on-disk layout of a prepared data set, the one home of its folder and file names.

    <root>/frames/<id>.jpg   the clip's frame (JPEG)
    <root>/audio/<id>.wav    the clip's audio (16 kHz mono PCM-16)

written by ``python -m marginnce_kit.prepare`` (real videos) and :mod:`marginnce_kit.data.synthetic`, read by
:class:`marginnce_kit.data.AudioVisualDataset`. This is the layout of the LVS / EZ-VSL data loaders
(``datasets.py`` of hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb, one frame and
one wav per clip id).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FRAMES_DIR", "AUDIO_DIR", "FRAME_SUFFIX", "AUDIO_SUFFIX", "frame_path", "audio_path", "make_dirs"]

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
