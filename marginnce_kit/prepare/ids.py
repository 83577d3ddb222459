"""Clip ids and videos: reading and writing id lists, finding a folder's videos by id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..data.annotations import load_id_list
from ..io import atomic_write_text, read_json

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts"}
)

"""Lower-case file suffixes that ``find_videos`` treats as videos."""

VGGSOUND_ID_PATTERN = r"(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d{6})"

"""A VGGSound id: an 11-character YouTube id, ``_``, the clip's start second in 6 digits."""


class ClipError(ValueError):
    """A clip that cannot be prepared; ``reason`` starts with the failure kind.

    Kinds: ``missing video``, ``unreadable container``, ``no video stream``,
    ``no audio stream``, ``window`` (the id does not match with ``window="from-id"``),
    ``window starts past the end``, ``window does not fit``, ``too short``, ``non-finite audio``,
    ``frame:`` / ``audio:`` (the acceptance rule), ``decode error``, ``unreadable orientation``
    (:mod:`.orientation`); the runner adds
    ``worker crashed`` and ``unexpected error`` (any other exception, e.g. a full disk).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_id(clip_id: str, where: str) -> str:
    """Return ``clip_id`` if it is a usable file stem, else raise ValueError naming ``where``."""
    if not clip_id or clip_id in {".", ".."} or "/" in clip_id or "\\" in clip_id:
        raise ValueError(f"{where}: expected a clip id (a file stem without '/' or '\\'), got {clip_id!r}")
    return clip_id


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """Read clip ids from a split file, in file order.

    Accepted formats: a JSON list of strings or of objects with a ``"file"`` key
    (``vggss.json``); otherwise text, one id per line, where only the part before the
    first comma counts (``vggss_test.csv``, ``flickr_test.csv``).  Blank lines are skipped,
    whitespace and CR line ends are stripped, a UTF-8 byte-order mark is dropped (the data
    loaders' split-file rules, :func:`marginnce_kit.io.read_text`; the JSON forms are extra).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        marginnce_kit.io.TextFileError: not UTF-8 text, or a ``.json`` file that is not JSON.
        ValueError: the file holds no ids, an id repeats (``entry`` counts lines or JSON
            items from 1), or an entry is not a usable id.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        # text split files: the loaders' own reader (first CSV column, blanks skipped, duplicates rejected)
        ids = load_id_list(path)
        for clip_id in ids:
            _check_id(clip_id, f"ids file {path}")
    else:
        data = read_json(path, "ids file")
        if not isinstance(data, list):
            raise ValueError(f"ids file {path}: expected a JSON list, got {type(data).__name__}")
        ids = []
        seen: set[str] = set()
        for i, entry in enumerate(data):
            if isinstance(entry, str):
                clip_id = entry.strip()
            elif isinstance(entry, dict) and isinstance(entry.get("file"), str):
                clip_id = entry["file"].strip()
            else:
                raise ValueError(
                    f"ids file {path}: entry {i}: expected a string or an object with a string "
                    f"'file', got {entry!r}"
                )
            _check_id(clip_id, f"ids file {path}")
            if clip_id in seen:
                raise ValueError(f"ids file {path}: entry {i + 1}: duplicate clip id {clip_id!r}")
            seen.add(clip_id)
            ids.append(clip_id)
    if not ids:
        raise ValueError(f"ids file {path}: expected at least one id, found none")
    return ids


def find_videos(
    videos_dir: str | os.PathLike[str], ids: Sequence[str] | None = None
) -> tuple[dict[str, Path], list[str]]:
    """Map clip ids to video files found directly in ``videos_dir`` (not recursive).

    A file is a video when its lower-cased suffix is in ``VIDEO_EXTENSIONS`` and its name
    does not start with ``.``; its id is the stem.

    Args:
        videos_dir: the folder of downloaded videos.
        ids: the ids wanted; ``None`` takes every video in the folder.

    Returns:
        ``(videos, missing)``: id -> path for the ids found (sorted by id when ``ids`` is
        None, else in ``ids`` order), and the wanted ids without a video file.

    Raises:
        NotADirectoryError: ``videos_dir`` is not a directory.
        ValueError: a wanted id has several video files (``a.mp4`` and ``a.mkv``).
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise NotADirectoryError(f"videos_dir: expected a directory, got {str(videos_dir)!r}")
    by_id: dict[str, list[Path]] = {}
    with os.scandir(videos_dir) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            path = Path(entry.path)
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                by_id.setdefault(path.stem, []).append(path)
    wanted = sorted(by_id) if ids is None else list(ids)
    videos: dict[str, Path] = {}
    missing: list[str] = []
    duplicates: list[str] = []
    for clip_id in wanted:
        paths = by_id.get(clip_id)
        if not paths:
            missing.append(clip_id)
        elif len(paths) > 1:
            duplicates.append(f"{clip_id}: " + ", ".join(sorted(p.name for p in paths)))
        else:
            videos[clip_id] = paths[0]
    if duplicates:
        raise ValueError(
            f"videos_dir {str(videos_dir)!r}: expected one video file per id, found several for "
            + "; ".join(duplicates[:10])
            + (f" (and {len(duplicates) - 10} more)" if len(duplicates) > 10 else "")
        )
    return videos, missing


def write_ids(path: str | os.PathLike[str], ids: Sequence[str]) -> None:
    """Write ``ids`` one per line to ``path`` (atomically: a temp file then ``os.replace``).

    The file reads back with ``read_ids`` and every loader's ``--train-list`` / ``--test-list``.
    """
    atomic_write_text("".join(f"{clip_id}\n" for clip_id in ids), path)
