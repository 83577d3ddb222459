"""``prepare``: a folder of videos -> a prepared data set, resumable, with its report (``prepare_report.json``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..data.acceptance import (
    SAMPLE_RATE,
)
from ..io import atomic_write_json, read_json
from ..layout import (
    AUDIO_DIR,
    DEFAULT_FRAME_FORMAT,
    FRAME_FORMATS,
    FRAMES_DIR,
    PREPARE_REPORT,
    audio_path,
    check_frame_format,
    frame_path,
    frame_suffix,
)
from .decode import _check_audio_seconds
from .ids import _check_id, find_videos
from .output import _check_frame_size
from .pool import _check_workers, _run_pool, _Task, _work, clean_stale_temps
from .window import WindowRule

REPORT_NAME = PREPARE_REPORT


def _write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`marginnce_kit.io.atomic_write_json`)."""
    atomic_write_json(data, path)


def _previous_clips(report_file: Path) -> dict[str, object]:
    """``clips`` of an earlier report in the same root (empty when there is none or it is unreadable)."""
    try:
        clips = read_json(report_file, "prepare report").get("clips", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return clips if isinstance(clips, dict) else {}


def _check_one_format(out_root: Path, frame_format: str) -> None:
    """A root holds frames of one format: refuse to add ``frame_format`` frames to a ``frames/`` folder that holds
    frames of another (the dataset and ``--verify`` read the one format the report records).

    Raises:
        ValueError: ``frames/`` holds a file of another format's suffix (the message names one).
    """
    for other in FRAME_FORMATS:
        if other == frame_format:
            continue
        found = next((out_root / FRAMES_DIR).glob(f"*{frame_suffix(other)}"), None)
        if found is not None:
            raise ValueError(
                f"frame_format: expected {frame_format} frames, but {str(out_root / FRAMES_DIR)!r} holds {other} "
                f"frames (e.g. {found.name!r}); a prepared root holds one format: prepare into another --out, or "
                f"keep --frame-format {other}"
            )


def prepare(
    videos_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    workers: int = 1,
    audio_seconds: float = 10.0,
    progress: bool = True,
    window: WindowRule | None = None,
    frame_size: int | None = None,
    frame_format: str = DEFAULT_FRAME_FORMAT,
) -> dict[str, object]:
    """Prepare every video of ``videos_dir`` (or only ``ids``) into ``out_root``.

    Deletes stale temp files, skips clips whose frame and wav both exist, prepares the
    rest (sequentially for ``workers == 1``, else in a process pool) and writes
    ``out_root/prepare_report.json``.  Per-clip failures are recorded, never raised.

    Args:
        window: the clip-window rule (default ``WindowRule()``: VGGSound ids, ``auto``).
        frame_size: store frames with this shorter side (``save_frame``); None: full frames.
        frame_format: ``"jpg"`` or ``"png"`` (``marginnce_kit.layout.FRAME_FORMATS``): the frames' file format
            and suffix, recorded in the report for the dataset and ``--verify``.

    Returns:
        The report: ``{"videos", "out", "audio_seconds", "sample_rate", "frame_size", "frame_format", "window",
        "total", "done": [ids], "skipped": n, "failed": [{"id", "reason"}], "clips": {id: {"window": [a, b],
        "window_rule", "frame_time", "audio": [start, end], "video_seconds", "rotation"}},
        "stale_temp_files_removed", "interrupted"}``; ``total = len(done) + skipped + len(failed)``;
        ``clips`` holds the clips prepared now and, carried over from the previous report, the
        skipped ones (seconds on each file's timeline; ``rotation``: the display rotation applied to the
        frame, counterclockwise degrees, :mod:`.orientation`; absent in entries carried over from reports
        before it).  ``interrupted`` is True when a KeyboardInterrupt stopped the run (the report is written,
        the interrupt re-raised).

    Raises:
        ValueError: a bad argument, or ``out_root/frames`` holds frames of another format than ``frame_format``.
    """
    workers = _check_workers(workers)
    audio_seconds = _check_audio_seconds(audio_seconds)
    frame_size = _check_frame_size(frame_size)
    frame_format = check_frame_format(frame_format)
    rule = WindowRule() if window is None else window
    if not isinstance(rule, WindowRule):
        raise TypeError(f"window: expected a WindowRule, got {type(rule).__name__}")
    if ids is not None:
        ids = [_check_id(clip_id, "ids") for clip_id in ids]
    videos, missing = find_videos(videos_dir, ids)
    out_root = Path(out_root)
    (out_root / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    (out_root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    stale = clean_stale_temps(out_root)
    _check_one_format(out_root, frame_format)
    previous = _previous_clips(out_root / REPORT_NAME)

    done: list[str] = []
    clips: dict[str, object] = {}
    failed: list[dict[str, str]] = [
        {"id": clip_id, "reason": f"missing video: no {clip_id}.<video extension> in {str(videos_dir)!r}"}
        for clip_id in missing
    ]
    tasks: list[_Task] = []
    skipped = 0
    for clip_id, video in videos.items():
        if frame_path(out_root, clip_id, frame_format).is_file() and audio_path(out_root, clip_id).is_file():
            skipped += 1
            if clip_id in previous:
                clips[clip_id] = previous[clip_id]
        else:
            tasks.append((clip_id, str(video), str(out_root), audio_seconds, rule, frame_size, frame_format))

    bar = tqdm(total=len(tasks), desc="prepare", unit="clip", disable=not progress, dynamic_ncols=True)

    def on_result(clip_id: str, reason: str | None, entry: dict[str, object] | None = None) -> None:
        if reason is None:
            done.append(clip_id)
            clips[clip_id] = entry
        else:
            failed.append({"id": clip_id, "reason": reason})
            bar.set_postfix(failed=len(failed), refresh=False)
        bar.update(1)

    interrupted = False
    try:
        if workers == 1:
            for task in tasks:
                on_result(*_work(task))
        else:
            _run_pool(tasks, workers, on_result)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        report: dict[str, object] = {
            "videos": str(videos_dir),
            "out": str(out_root),
            "audio_seconds": audio_seconds,
            "sample_rate": SAMPLE_RATE,
            "frame_size": frame_size,
            "frame_format": frame_format,
            "window": {
                "mode": rule.mode, "start_regex": rule.id_pattern, "clip_seconds": rule.clip_seconds,
                "tolerance": rule.tolerance,
            },
            "total": len(videos) + len(missing),
            "done": sorted(done),
            "skipped": skipped,
            "failed": sorted(failed, key=lambda item: item["id"]),
            "clips": dict(sorted(clips.items())),
            "stale_temp_files_removed": stale,
            "interrupted": interrupted,
        }
        _write_json_atomic(out_root / REPORT_NAME, report)
    return report
