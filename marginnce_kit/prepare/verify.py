"""``verify``: check a prepared data set's clips against the acceptance rule (what the loader would reject)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
from collections.abc import Iterable
from pathlib import Path

from ..data.acceptance import audio_part, frame_part
from ..layout import audio_path, check_frame_format, frame_path, root_frame_format
from .ids import _check_id
from .pool import _check_workers


def verify_clip(root: str | os.PathLike[str], clip_id: str, frame_format: str | None = None) -> list[str]:
    """Problems of one prepared clip under ``root``; empty when it is usable.

    ``missing frame`` / ``missing audio`` for absent files, ``frame does not decode: ...`` /
    ``audio does not decode: ...`` for files that do not decode completely, then the problems of
    the acceptance rule (``marginnce_kit.data.acceptance.clip_problems``) that ``prepare`` applied
    before writing and the data loader applies when loading: the same reasons.  The frame is
    ``frames/<id>.<frame_format>``; ``frame_format=None``: the root's, as its ``prepare_report.json`` records it
    (``marginnce_kit.layout.root_frame_format``), the file the dataset reads.

    Raises:
        ValueError: ``frame_format`` is not one of ``marginnce_kit.layout.FRAME_FORMATS``, or (``None``) the
            root's report cannot be read.
    """
    frame_format = root_frame_format(root) if frame_format is None else check_frame_format(frame_format)
    image_file = frame_path(root, clip_id, frame_format)
    wav_file = audio_path(root, clip_id)
    # the two halves of acceptance.load_clip, so the reason is the dataset's, word for word
    frame = ["missing frame"] if not image_file.is_file() else frame_part(image_file)[1]
    audio = ["missing audio"] if not wav_file.is_file() else audio_part(wav_file)[2]
    return frame + audio


def _verify_task(task: tuple[str, str, str]) -> list[str]:
    """Pool task for ``verify``: ``verify_clip(root, id, frame_format)``."""
    return verify_clip(task[0], task[1], task[2])


def verify(
    root: str | os.PathLike[str], ids: Iterable[str], workers: int = 1, frame_format: str | None = None
) -> list[dict[str, object]]:
    """Check every id's frame and wav under ``root`` against the acceptance rule (``verify_clip``).

    ``frame_format=None`` checks the frames of the format the root was prepared with (its
    ``prepare_report.json``'s ``frame_format``; ``jpg`` without a report), the files the dataset reads.

    Returns:
        One ``{"id": id, "problems": [str, ...]}`` per id with problems, in ``ids`` order;
        an empty list when all are fine.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
        ValueError: an id is not a usable file stem; a bad ``frame_format``; an unreadable report.
    """
    workers = _check_workers(workers)
    ids = [_check_id(clip_id, "ids") for clip_id in ids]
    if not Path(root).is_dir():
        raise NotADirectoryError(f"root: expected a directory, got {str(root)!r}")
    frame_format = root_frame_format(root) if frame_format is None else check_frame_format(frame_format)
    tasks = [(str(root), clip_id, frame_format) for clip_id in ids]
    if workers == 1:
        results = [_verify_task(task) for task in tasks]
    else:
        gc.collect()  # before the workers fork (training.step.make_train_loader says why)
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_verify_task, tasks, chunksize=64))
    return [
        {"id": clip_id, "problems": problems} for clip_id, problems in zip(ids, results) if problems
    ]
