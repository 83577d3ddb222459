"""Turn downloaded videos into the on-disk layout the data loaders read.

For every video ``<id>.<ext>`` (``<id>`` is the file stem, e.g. the VGGSound id
``zpWuikVorYg_000032``) this writes

* ``ROOT/frames/<id>.jpg`` -- the centre frame of the clip's window, RGB, JPEG quality 95 (Pillow);
  with ``--frame-size PX`` its shorter side bicubic-resized to ``PX`` (``save_frame``; 246 is what the
  training transform resizes 224-pixel inputs to, so the loader then skips that resize);
* ``ROOT/audio/<id>.wav``  -- up to ``audio_seconds`` of the window's audio centred on that frame's
  time, resampled to 16 kHz mono by FFmpeg's resampler (PyAV ``AudioResampler``, format ``s16``)
  and written as 16-bit PCM WAV (soundfile).

Definitions
-----------
Times
    Seconds on the file's own timeline (its packets' timestamps).  The file starts at ``t0``, the
    time of its first video frame (audio packets may start a few milliseconds earlier with the
    codec's priming samples), and lasts ``D = end - t0`` where ``end`` is the later of the two
    streams' last timestamp plus that packet's duration.
Clip window
    The span ``[a, b)`` of the file the clip is taken from.  A VGGSound id
    ``<11-character YouTube id>_<start second, 6 digits>`` names the 10 s clip ``[s, s + 10)`` of a
    YouTube video; users download either that clip (trimmed, ``D`` about 10 s) or the whole video
    (untrimmed).  With ``window="auto"`` (the default):

    * the id matches ``id_pattern`` (default ``VGGSOUND_ID_PATTERN``) and the video is clearly longer
      than one clip, ``D > clip_seconds + tolerance`` (10 s + ``WINDOW_TOLERANCE`` = 1 s): the window
      comes from the id, ``[t0 + s, t0 + s + clip_seconds)``;
    * otherwise (a trimmed clip, or another id scheme): the whole file.

    ``window="from-id"`` always takes the window from the id (an id that does not match is a
    failure); ``window="whole-file"`` never does.  ``id_pattern`` is a regular expression matched
    against the whole id with a named group ``start`` (seconds, e.g. ``\\d+`` or ``\\d+(\\.\\d+)?``)
    and optionally ``end`` (seconds; without it the window is ``clip_seconds`` long).
    A window from the id must lie in the video: ``s >= D`` fails as ``window starts past the end``,
    ``s + clip_seconds > D + tolerance`` as ``window does not fit``; within the tolerance its end is
    cut to ``D``.  Neither is ever written.
Centre frame
    With ``N`` video packets (= frames) whose timestamps lie in the window, the frame at index
    ``k = N // 2`` of them in presentation order (for even ``N`` the later of the two middle
    frames).  For a whole-file window at a constant frame rate this is the frame shown at the clip's
    midpoint.  Its presentation time ``t_c`` (seconds) centres the audio window.
Audio window
    Let ``n`` be the number of 16 kHz samples of the first audio stream that lie in the clip window
    (the whole stream for a whole-file window), starting at time ``t_w``,
    ``L = round(audio_seconds * 16000)`` and ``W = min(L, n)``.  The centre sample is
    ``c = round((t_c - t_w) * 16000)`` and the kept samples are ``[s, s + W)`` with
    ``s = clamp(c - W // 2, 0, n - W)``: centred on the frame where the window allows, slid inwards
    (never shortened) at its ends.  For 10 s VGGSound clips the default ``audio_seconds = 10``
    therefore keeps the whole clip, and the loader's 3 s centred crop is centred on the clip, as
    upstream does.
Acceptance
    Before anything is written, the frame and the kept audio go through the acceptance rule that
    ``--verify`` and the data loader apply too (``baselines.data.acceptance.clip_problems``:
    decodable, at least 1 s of audio, 16 kHz, mono, finite), and every decoded audio sample of the
    whole stream must be finite (``non-finite audio``: NaN or +-Inf anywhere).  A clip also fails as
    "too short" when its window holds no video frame, or when its audio does not reach the centre
    frame's time (the pair would not be simultaneous).

Robustness
----------
* A clip whose two outputs both exist is skipped (existence only; ``--verify`` decodes).  Its entry
  in ``clips`` of the report is carried over from the previous report.
* Outputs are written to ``<final name>.<pid>.tmp`` in the same directory and moved into
  place with ``os.replace``; a killed run leaves at most ``*.tmp`` files, which the next run
  deletes on start.  One run per ``ROOT`` at a time.
* Per-clip failures (missing video, unreadable container, no video / audio stream, window, too
  short, non-finite audio, decode error, a worker process that crashed) never stop the run: each is
  recorded with its id and reason in ``ROOT/prepare_report.json`` and counted in the summary line.
  With ``--workers > 1`` a crashed worker process only costs the clips it was decoding:
  the clips in flight are re-run one at a time in fresh processes to find the culprit.

Command line
------------
``python -m baselines.prepare --videos DIR --out ROOT [--ids LIST] [--workers N]
[--audio-seconds 10] [--window auto|from-id|whole-file] [--start-regex RE] [--frame-size PX]`` prepares (only the
ids in ``LIST`` when given); ``python -m baselines.prepare --verify ROOT --ids LIST
[--write-clean CLEAN]`` lists the ids that lack a frame or an audio file or that break the
acceptance rule (exit status 1 when it finds any) and writes the ids that pass to ``CLEAN``.
``LIST`` is a text file with one id per line (a CSV's first column is used, so ``vggss_test.csv``
and ``flickr_test.csv`` work) or a JSON list of ids or of objects with a ``"file"`` key
(``vggss.json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import re
import sys
import time
from bisect import bisect_left
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av
import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from .data.acceptance import (
    MIN_AUDIO_SECONDS,
    SAMPLE_RATE,
    ClipRejected,
    audio_problems,
    clip_problems,
    decode_audio,
    decode_frame,
    frame_problems,
    nonfinite_counts,
    nonfinite_reason,
)
from .data.annotations import load_id_list

__all__ = [
    "AUDIO_DIR",
    "CLIP_SECONDS",
    "ClipError",
    "DecodedClip",
    "FRAMES_DIR",
    "JPEG_QUALITY",
    "MIN_AUDIO_SECONDS",
    "REPORT_NAME",
    "SAMPLE_RATE",
    "VGGSOUND_ID_PATTERN",
    "VIDEO_EXTENSIONS",
    "WINDOW_MODES",
    "WINDOW_TOLERANCE",
    "WindowRule",
    "audio_path",
    "audio_window",
    "clean_stale_temps",
    "clip_window",
    "decode_clip",
    "find_videos",
    "frame_path",
    "main",
    "prepare",
    "prepare_clip",
    "save_frame",
    "shrink_frame",
    "read_ids",
    "verify",
    "verify_clip",
    "write_ids",
]

JPEG_QUALITY = 95
FRAMES_DIR = "frames"
AUDIO_DIR = "audio"
REPORT_NAME = "prepare_report.json"
TMP_SUFFIX = ".tmp"
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts"}
)
"""Lower-case file suffixes that ``find_videos`` treats as videos."""
CLIP_SECONDS = 10.0
"""Length of a VGGSound clip in seconds (the window an id's start second opens)."""
WINDOW_TOLERANCE = 1.0
"""Seconds of slack in the window rule: a video is "clearly longer than one clip" when
``D > clip_seconds + WINDOW_TOLERANCE``; a window from the id may overrun the video's end by at most
this much (its end is then cut to the video's end).  It covers the few hundredths of a second that
re-encoding and audio padding add to a trimmed 10 s clip, with a wide margin."""
VGGSOUND_ID_PATTERN = r"(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d{6})"
"""A VGGSound id: an 11-character YouTube id, ``_``, the clip's start second in 6 digits."""
WINDOW_MODES = ("auto", "from-id", "whole-file")
"""``--window`` choices (see the module docstring)."""

# Test hooks, read only in the worker wrapper ``_work`` (never by ``prepare_clip``):
# seconds to pause between writing the temp files and renaming them, and an id whose
# worker process exits abruptly (to exercise kill/resume and crash isolation).
_PAUSE_ENV = "MARGINNCE_PREPARE_TEST_PAUSE"
_CRASH_ENV = "MARGINNCE_PREPARE_TEST_CRASH_ID"
_IN_FLIGHT_PER_WORKER = 4


class ClipError(ValueError):
    """A clip that cannot be prepared; ``reason`` starts with the failure kind.

    Kinds: ``missing video``, ``unreadable container``, ``no video stream``,
    ``no audio stream``, ``window`` (the id does not match with ``window="from-id"``),
    ``window starts past the end``, ``window does not fit``, ``too short``, ``non-finite audio``,
    ``frame:`` / ``audio:`` (the acceptance rule), ``decode error``; the runner adds
    ``worker crashed`` and ``unexpected error`` (any other exception, e.g. a full disk).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WindowRule:
    """How ``decode_clip`` chooses a clip's window (see the module docstring).

    Attributes:
        mode: ``"auto"``, ``"from-id"`` or ``"whole-file"``.
        id_pattern: regular expression matched against the whole id; named group ``start``
            (seconds) and optionally ``end`` (seconds).
        clip_seconds: window length when the pattern has no ``end`` group (> 0).
        tolerance: seconds of slack (>= 0), see ``WINDOW_TOLERANCE``.

    Raises:
        ValueError: an unknown mode, a pattern that does not compile or has no ``start`` group, a
            non-finite or out-of-range ``clip_seconds`` / ``tolerance``.
    """

    mode: str = "auto"
    id_pattern: str = VGGSOUND_ID_PATTERN
    clip_seconds: float = CLIP_SECONDS
    tolerance: float = WINDOW_TOLERANCE
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in WINDOW_MODES:
            raise ValueError(f"window: expected one of {', '.join(WINDOW_MODES)}, got {self.mode!r}")
        try:
            regex = re.compile(self.id_pattern)
        except re.error as error:
            raise ValueError(f"start-regex: {self.id_pattern!r} does not compile: {error}") from None
        if "start" not in regex.groupindex:
            raise ValueError(f"start-regex: expected a named group (?P<start>...), got {self.id_pattern!r}")
        for name, value, low in (("clip_seconds", self.clip_seconds, 0.0), ("tolerance", self.tolerance, None)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            if (low is not None and value <= low) or value < 0:
                raise ValueError(f"{name}: expected a number {'> 0' if low is not None else '>= 0'}, got {value!r}")
        object.__setattr__(self, "_regex", regex)

    def id_window(self, clip_id: str) -> tuple[float, float] | None:
        """``(start, end)`` seconds named by ``clip_id``, or ``None`` when the id does not match."""
        match = self._regex.fullmatch(clip_id)
        if match is None:
            return None
        try:
            start = float(match.group("start"))
            end_text = match.group("end") if "end" in self._regex.groupindex else None
            end = float(end_text) if end_text else start + self.clip_seconds
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            return None
        return start, end


@dataclass(frozen=True)
class DecodedClip:
    """What ``decode_clip`` extracts from one video.

    Attributes:
        frame: centre frame, ``(H, W, 3)`` uint8 RGB.
        audio: kept audio window, ``(W,)`` int16 at ``SAMPLE_RATE`` Hz, mono.
        frame_time: presentation time ``t_c`` of the centre frame in seconds (file timeline).
        frame_index: index ``k = N // 2`` of the centre frame among the window's frames.
        num_frames: number ``N`` of video frames in the window.
        audio_start: time of the first kept-window sample of the stream, ``t_w``, in seconds
            (the stream's first decoded sample for a whole-file window).
        audio_samples: number ``n`` of 16 kHz samples of the stream inside the window.
        window_start: index ``s`` of the first kept sample within those ``n``.
        window: ``(a, b)`` the clip window in seconds (file timeline).
        window_rule: ``"from-id"`` or ``"whole-file"``: where the window came from.
        file_start: ``t0``, the file's first timestamp in seconds.
        file_seconds: ``D``, the file's length in seconds.
    """

    frame: np.ndarray
    audio: np.ndarray
    frame_time: float
    frame_index: int
    num_frames: int
    audio_start: float
    audio_samples: int
    window_start: int
    window: tuple[float, float] = (0.0, 0.0)
    window_rule: str = "whole-file"
    file_start: float = 0.0
    file_seconds: float = 0.0

    def report(self) -> dict[str, object]:
        """The clip's entry in ``prepare_report.json``'s ``clips`` (seconds, file timeline, 6 decimals)."""
        kept_start = self.audio_start + self.window_start / SAMPLE_RATE
        return {
            "window": [round(self.window[0], 6), round(self.window[1], 6)],
            "window_rule": self.window_rule,
            "frame_time": round(self.frame_time, 6),
            "audio": [round(kept_start, 6), round(kept_start + len(self.audio) / SAMPLE_RATE, 6)],
            "video_seconds": round(self.file_seconds, 6),
        }


def frame_path(root: str | os.PathLike[str], clip_id: str) -> Path:
    """``root/frames/<clip_id>.jpg``."""
    return Path(root) / FRAMES_DIR / f"{clip_id}.jpg"


def audio_path(root: str | os.PathLike[str], clip_id: str) -> Path:
    """``root/audio/<clip_id>.wav``."""
    return Path(root) / AUDIO_DIR / f"{clip_id}.wav"


def _check_id(clip_id: str, where: str) -> str:
    """Return ``clip_id`` if it is a usable file stem, else raise ValueError naming ``where``."""
    if not clip_id or clip_id in {".", ".."} or "/" in clip_id or "\\" in clip_id:
        raise ValueError(f"{where}: expected a clip id (a file stem without '/' or '\\'), got {clip_id!r}")
    return clip_id


def _check_audio_seconds(audio_seconds: float) -> float:
    """Validate ``audio_seconds``: a finite real number >= ``MIN_AUDIO_SECONDS`` (shorter output
    would break the acceptance rule that ``--verify`` and the loader apply)."""
    if isinstance(audio_seconds, bool) or not isinstance(audio_seconds, (int, float)):
        raise TypeError(f"audio_seconds: expected a float, got {type(audio_seconds).__name__}")
    if not math.isfinite(audio_seconds) or audio_seconds < MIN_AUDIO_SECONDS:
        raise ValueError(
            f"audio_seconds: expected a finite number >= {MIN_AUDIO_SECONDS:g} (the shortest usable "
            f"audio), got {audio_seconds!r}"
        )
    return float(audio_seconds)


def _check_workers(workers: int) -> int:
    """Validate ``workers``: an int >= 1."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers: expected an int, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers}")
    return workers


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """Read clip ids from a split file, in file order.

    Accepted formats: a JSON list of strings or of objects with a ``"file"`` key
    (``vggss.json``); otherwise text, one id per line, where only the part before the
    first comma counts (``vggss_test.csv``, ``flickr_test.csv``).  Blank lines are skipped,
    whitespace and CR line ends are stripped (the data loaders' split-file rules; the JSON
    forms are extra).

    Raises:
        FileNotFoundError: ``path`` does not exist.
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
        data = json.loads(path.read_text(encoding="utf-8"))
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


def audio_window(num_samples: int, centre: int, length: int) -> tuple[int, int]:
    """Sample range ``[s, s + W)`` of a window of ``W = min(length, num_samples)`` samples.

    ``s = clamp(centre - W // 2, 0, num_samples - W)``: centred on ``centre`` where the
    stream allows, slid inwards at its ends (see the module docstring).
    """
    if num_samples < 0 or length < 1:
        raise ValueError(
            f"audio_window: expected num_samples >= 0 and length >= 1, got {num_samples}, {length}"
        )
    width = min(length, num_samples)
    start = min(max(centre - width // 2, 0), num_samples - width)
    return start, start + width


def _open(video_path: Path) -> av.container.InputContainer:
    """Open a container for reading, mapping FFmpeg errors to ``unreadable container``."""
    try:
        return av.open(str(video_path), mode="r", metadata_errors="replace")
    except av.FFmpegError as error:
        raise ClipError(f"unreadable container: {error}") from error


@dataclass(frozen=True)
class _Probe:
    """Pass 1 of ``decode_clip``: timestamps from demuxed packets, nothing decoded."""

    frame_times: list[float]  # presentation times of the non-empty video packets, sorted (seconds)
    start: float  # t0, the first video frame's time
    end: float  # t0 + D


def _packet_time(packet: av.Packet) -> float | None:
    """Presentation time of a packet in seconds (its decode time when it has no pts)."""
    stamp = packet.pts if packet.pts is not None else packet.dts
    if stamp is None or packet.time_base is None:
        return None
    return float(stamp * packet.time_base)


def _probe(video_path: Path) -> _Probe:
    """Demux both first streams once: video frame times, the file's start and end."""
    with _open(video_path) as container:
        if not container.streams.video:
            raise ClipError("no video stream")
        if not container.streams.audio:
            raise ClipError("no audio stream")
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        times: list[float | None] = []
        ends: list[float] = []
        try:
            for packet in container.demux(video_stream, audio_stream):
                if packet.size <= 0:
                    continue
                t = _packet_time(packet)
                if packet.stream.index == video_stream.index:
                    times.append(t)
                if t is not None:
                    duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
                    ends.append(t + duration)
        except av.FFmpegError as error:
            raise ClipError(f"decode error: demuxing packets: {error}") from error
    if not times:
        raise ClipError("too short: the video stream has no frames")
    if any(t is None for t in times):
        # no timestamps (rare, e.g. raw streams): the frame rate places the frames
        rate = video_stream.average_rate or video_stream.guessed_rate
        if not rate:
            raise ClipError("decode error: the video packets have no timestamps and the stream no frame rate")
        times = [i / float(rate) for i in range(len(times))]
        ends.append(len(times) / float(rate))
    frame_times = sorted(t for t in times if t is not None)
    # the file starts with its first video frame: audio packets may start earlier by the codec's
    # priming samples (AAC in MP4: -1024 samples), which are not part of the video's timeline
    return _Probe(frame_times, frame_times[0], max(ends))


def clip_window(clip_id: str, file_start: float, file_end: float, rule: WindowRule) -> tuple[float, float, str]:
    """The clip window ``(a, b, how)`` of a file spanning ``[file_start, file_end]`` seconds.

    ``how`` is ``"from-id"`` or ``"whole-file"``; a whole-file window is ``(file_start, file_end)``.
    See the module docstring for the rule.

    Raises:
        ClipError: ``window starts past the end`` / ``window does not fit`` (a window from the id
            that the file cannot hold), ``window`` (no match with ``rule.mode == "from-id"``).
    """
    whole = (file_start, file_end, "whole-file")
    if rule.mode == "whole-file":
        return whole
    named = rule.id_window(clip_id)
    if named is None:
        if rule.mode == "from-id":
            raise ClipError(
                f"window: --window from-id but the id {clip_id!r} does not match --start-regex "
                f"{rule.id_pattern!r}"
            )
        return whole
    start, end = named
    length = file_end - file_start
    if rule.mode == "auto" and length <= (end - start) + rule.tolerance:
        return whole  # a trimmed clip: the file is the clip
    if start >= length:
        raise ClipError(
            f"window starts past the end: the id names {start:.3f}-{end:.3f} s, the video is "
            f"{length:.3f} s long"
        )
    if end > length + rule.tolerance:
        raise ClipError(
            f"window does not fit: the id names {start:.3f}-{end:.3f} s, the video is {length:.3f} s "
            f"long (tolerance {rule.tolerance:g} s)"
        )
    return file_start + start, file_start + min(end, length), "from-id"


_FLOAT_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})


def decode_clip(
    video_path: str | os.PathLike[str], audio_seconds: float = 10.0, window: WindowRule | None = None
) -> DecodedClip:
    """Decode the centre frame and the centred audio window of one video's clip window.

    Two passes: the first demuxes the packets (no decoding) for the frame times and the file's
    span, which fix the clip window and its centre frame; the second decodes video up to that frame
    and the whole first audio stream, resampled to 16 kHz mono int16 as it is decoded (float
    samples are checked for NaN / Inf as decoded, before resampling).  See the module docstring for
    the window, centre-frame, audio-window and acceptance rules.

    Args:
        video_path: the video file; its stem is the clip id.
        audio_seconds: seconds of audio to keep (>= ``MIN_AUDIO_SECONDS``).
        window: the window rule (default ``WindowRule()``: ``auto`` with VGGSound ids).

    Raises:
        ClipError: the clip cannot be used; ``reason`` says why.
        ValueError / TypeError: ``audio_seconds`` is not a finite number >= 1.
    """
    audio_seconds = _check_audio_seconds(audio_seconds)
    rule = WindowRule() if window is None else window
    if not isinstance(rule, WindowRule):
        raise TypeError(f"window: expected a WindowRule, got {type(rule).__name__}")
    video_path = Path(video_path)
    probe = _probe(video_path)
    win_a, win_b, how = clip_window(video_path.stem, probe.start, probe.end, rule)
    if how == "whole-file":
        first, last = 0, len(probe.frame_times)
    else:
        first, last = bisect_left(probe.frame_times, win_a), bisect_left(probe.frame_times, win_b)
    num_frames = last - first
    if num_frames == 0:
        raise ClipError(f"too short: no video frame in the window {win_a:.3f}-{win_b:.3f} s")
    target_in_window = num_frames // 2
    target = first + target_in_window  # index among all frames, in presentation order

    frame: np.ndarray | None = None
    frame_time: float | None = None
    decoded_video = 0
    audio_start: float | None = None
    chunks: list[np.ndarray] = []
    bad_nan = bad_pos = bad_neg = 0
    first_bad: float | None = None
    with _open(video_path) as container:
        video_stream = container.streams.video[0]
        audio_stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            for packet in container.demux(video_stream, audio_stream):
                if packet.stream.index == video_stream.index:
                    if frame is not None:
                        continue
                    for video_frame in packet.decode():
                        if decoded_video == target:
                            frame = video_frame.to_ndarray(format="rgb24")
                            frame_time = (
                                float(video_frame.time) if video_frame.time is not None
                                else probe.frame_times[target]
                            )
                        decoded_video += 1
                else:
                    for audio_frame in packet.decode():
                        if audio_start is None:
                            audio_start = float(audio_frame.time) if audio_frame.time is not None else 0.0
                        if audio_frame.format.name in _FLOAT_FORMATS:
                            n_nan, n_pos, n_neg, at = nonfinite_counts(audio_frame.to_ndarray().T)
                            if at is not None:
                                bad_nan, bad_pos, bad_neg = bad_nan + n_nan, bad_pos + n_pos, bad_neg + n_neg
                                if first_bad is None:
                                    t = audio_frame.time if audio_frame.time is not None else 0.0
                                    # planar arrays are [channels, n] (.T: [n, channels]); packed
                                    # ones [1, n * channels]
                                    step = 1 if audio_frame.format.is_planar else len(audio_frame.layout.channels)
                                    first_bad = float(t) + (at // step) / audio_frame.sample_rate
                        for out in resampler.resample(audio_frame):
                            chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as error:
            raise ClipError(f"decode error: {error}") from error

    if frame is None or frame_time is None:
        raise ClipError(
            f"decode error: decoded {decoded_video} video frames from {len(probe.frame_times)} packets, "
            f"the centre frame is index {target}"
        )
    stream = np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)
    if first_bad is not None:  # the whole decoded stream, not only the window
        raise ClipError(nonfinite_reason(bad_nan, bad_pos, bad_neg, first_bad))
    stream_start = 0.0 if audio_start is None else audio_start
    if how == "whole-file":
        lo, hi = 0, int(stream.shape[0])
    else:
        lo = min(max(round((win_a - stream_start) * SAMPLE_RATE), 0), stream.shape[0])
        hi = min(max(round((win_b - stream_start) * SAMPLE_RATE), lo), stream.shape[0])
    in_window = stream[lo:hi]
    num_samples = int(in_window.shape[0])
    window_audio_start = stream_start + lo / SAMPLE_RATE
    if num_samples >= round(MIN_AUDIO_SECONDS * SAMPLE_RATE):
        audio_end = window_audio_start + num_samples / SAMPLE_RATE
        if not window_audio_start <= frame_time <= audio_end:
            raise ClipError(
                f"too short: the audio spans {window_audio_start:.3f}-{audio_end:.3f} s and misses the "
                f"centre frame at {frame_time:.3f} s"
            )
        centre = round((frame_time - window_audio_start) * SAMPLE_RATE)
        start, stop = audio_window(num_samples, centre, round(audio_seconds * SAMPLE_RATE))
    else:
        start, stop = 0, num_samples  # too short: the rule below says so
    kept = np.ascontiguousarray(in_window[start:stop])
    problems = clip_problems(Image.fromarray(frame), (kept, SAMPLE_RATE))
    if problems:
        raise ClipError("; ".join(problems))
    return DecodedClip(
        frame=frame,
        audio=kept,
        frame_time=frame_time,
        frame_index=target_in_window,
        num_frames=num_frames,
        audio_start=window_audio_start,
        audio_samples=num_samples,
        window_start=start,
        window=(win_a, win_b),
        window_rule=how,
        file_start=probe.start,
        file_seconds=probe.end - probe.start,
    )


def _temp_path(final: Path) -> Path:
    """Temp name beside ``final``: ``<name>.<pid>.tmp`` (ignored by the skip check)."""
    return final.with_name(f"{final.name}.{os.getpid()}{TMP_SUFFIX}")


def shrink_frame(frame: np.ndarray, short_side: int) -> np.ndarray:
    """``--frame-size``: the ``(H, W, 3)`` uint8 frame bicubic-resized (Pillow ``BICUBIC``, what
    torchvision's ``Resize(short_side, bicubic)`` does to a PIL image) so that its shorter side is
    ``short_side`` and the longer ``int(short_side * longer / shorter)``; returned unchanged when its
    shorter side is ``short_side`` or less (frames are never enlarged).

    With ``short_side = int(1.1 * 224) = 246`` a stored frame is already the size the training
    transform resizes to, so the loader skips the resize (and decodes 2.1x fewer pixels of a
    640 x 360 frame).

    Raises:
        ValueError: ``short_side`` is not a positive int or ``frame`` not ``(H, W, 3)`` uint8.
    """
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1:
        raise ValueError(f"short_side: expected a positive int, got {short_side!r}")
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame: expected an (H, W, 3) uint8 array, got {getattr(frame, 'dtype', type(frame))} "
                         f"{getattr(frame, 'shape', '')}")
    h, w = frame.shape[:2]
    if min(h, w) <= short_side:
        return frame
    size = (int(short_side * w / h), short_side) if w >= h else (short_side, int(short_side * h / w))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


def save_frame(frame: np.ndarray, path: str | os.PathLike[str], frame_size: int | None = None) -> None:
    """Write the centre frame ``(H, W, 3)`` uint8 as a JPEG file (``format="JPEG"`` whatever the name).

    ``frame_size=None``: the full frame, quality ``JPEG_QUALITY`` (95), Pillow's default 4:2:0 chroma.
    Otherwise ``shrink_frame(frame, frame_size)`` at quality 95 with full-resolution chroma (4:4:4,
    ``subsampling=0``): at 4:2:0 the small frame would lose more colour detail than the loader's
    resize of a full frame does (the resize averages the JPEG error away); at 4:4:4 it is as close to
    the source frame as that resize is or closer, and decodes as fast (``benchmarks/data_loading.py``
    measures both: the ``vs source`` columns).
    """
    if frame_size is None:
        Image.fromarray(frame).save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(shrink_frame(frame, frame_size)).save(
            path, format="JPEG", quality=JPEG_QUALITY, subsampling=0
        )


def _check_frame_size(frame_size: int | None) -> int | None:
    if frame_size is not None and (isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 1):
        raise ValueError(f"frame_size: expected None or an int >= 1, got {frame_size!r}")
    return frame_size


def _prepare_clip(
    video_path: Path, out_root: Path, audio_seconds: float, window: WindowRule | None = None,
    pause_before_rename: float = 0.0, frame_size: int | None = None,
) -> DecodedClip:
    """``prepare_clip`` with an optional pause between writing temps and renaming (test hook)."""
    clip_id = _check_id(video_path.stem, "video_path")
    clip = decode_clip(video_path, audio_seconds, window)
    frame_final = frame_path(out_root, clip_id)
    audio_final = audio_path(out_root, clip_id)
    frame_final.parent.mkdir(parents=True, exist_ok=True)
    audio_final.parent.mkdir(parents=True, exist_ok=True)
    frame_tmp, audio_tmp = _temp_path(frame_final), _temp_path(audio_final)
    try:
        save_frame(clip.frame, frame_tmp, frame_size)
        sf.write(audio_tmp, clip.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        if pause_before_rename > 0:
            time.sleep(pause_before_rename)
        os.replace(audio_tmp, audio_final)
        os.replace(frame_tmp, frame_final)
    finally:
        for tmp in (frame_tmp, audio_tmp):
            tmp.unlink(missing_ok=True)
    return clip


def prepare_clip(
    video_path: str | os.PathLike[str], out_root: str | os.PathLike[str], audio_seconds: float = 10.0,
    window: WindowRule | None = None, frame_size: int | None = None,
) -> str:
    """Write ``out_root/frames/<id>.jpg`` and ``out_root/audio/<id>.wav`` for one video.

    ``<id>`` is the video's file stem.  Existing outputs are overwritten; each file is
    written to a temp name and renamed, so it is either absent or complete.

    Returns:
        The clip id.

    Raises:
        ClipError: the video cannot be used (``reason`` says why); nothing is written.
    """
    video_path = Path(video_path)
    if not video_path.is_file():
        raise ClipError(f"missing video: {str(video_path)!r} is not a file")
    _prepare_clip(video_path, Path(out_root), _check_audio_seconds(audio_seconds), window,
                  frame_size=_check_frame_size(frame_size))
    return video_path.stem


_Task = tuple[str, str, str, float, WindowRule, "int | None"]
_Result = tuple[str, "str | None", "dict[str, object] | None"]


def _work(task: _Task) -> _Result:
    """Pool task: prepare one clip; ``(id, None, report entry)`` or ``(id, reason, None)``; never raises."""
    clip_id, video, out_root, audio_seconds, window, frame_size = task
    if os.environ.get(_CRASH_ENV) == clip_id:
        os._exit(70)
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    try:
        clip = _prepare_clip(Path(video), Path(out_root), audio_seconds, window, pause_before_rename=pause,
                             frame_size=frame_size)
    except ClipError as error:
        return clip_id, error.reason, None
    except Exception as error:  # anything else is recorded, never allowed to stop the run
        return clip_id, f"unexpected error: {type(error).__name__}: {error}", None
    return clip_id, None, clip.report()


def clean_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete ``*.tmp`` files left in ``root/frames`` and ``root/audio``; return how many."""
    removed = 0
    for sub in (FRAMES_DIR, AUDIO_DIR):
        folder = Path(root) / sub
        if folder.is_dir():
            for tmp in folder.glob(f"*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _run_pool(
    tasks: Sequence[_Task],
    workers: int,
    on_result: Callable[[str, "str | None", "dict[str, object] | None"], None],
) -> None:
    """Run ``_work`` over ``tasks`` in processes, calling ``on_result(id, reason, entry)`` for each.

    At most ``_IN_FLIGHT_PER_WORKER * workers`` tasks are submitted at a time.  If a worker
    process dies, the pool breaks and every unfinished task in flight is re-run alone in a
    fresh one-process pool; a task that kills that one too is reported as
    ``worker crashed``.  Then a fresh pool carries on with the remaining tasks.
    """
    pending = deque(tasks)
    while pending:
        suspects: list[_Task] = []
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            in_flight: dict[cf.Future[_Result], _Task] = {}
            while pending or in_flight:
                while pending and len(in_flight) < _IN_FLIGHT_PER_WORKER * workers:
                    task = pending.popleft()
                    in_flight[pool.submit(_work, task)] = task
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                broken = False
                for future in finished:
                    task = in_flight.pop(future)
                    try:
                        on_result(*future.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                        broken = True
                if broken:
                    cf.wait(in_flight)
                    for future, task in in_flight.items():
                        if isinstance(future.exception(), BrokenProcessPool):
                            suspects.append(task)
                        else:
                            on_result(*future.result())
                    break
        for task in suspects:
            with cf.ProcessPoolExecutor(max_workers=1) as lone:
                try:
                    on_result(*lone.submit(_work, task).result())
                except BrokenProcessPool:
                    on_result(task[0], "worker crashed: the worker process died while preparing this clip", None)


def _write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temp file and ``os.replace``."""
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _previous_clips(report_file: Path) -> dict[str, object]:
    """``clips`` of an earlier report in the same root (empty when there is none or it is unreadable)."""
    try:
        clips = json.loads(report_file.read_text(encoding="utf-8")).get("clips", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return clips if isinstance(clips, dict) else {}


def prepare(
    videos_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    workers: int = 1,
    audio_seconds: float = 10.0,
    progress: bool = True,
    window: WindowRule | None = None,
    frame_size: int | None = None,
) -> dict[str, object]:
    """Prepare every video of ``videos_dir`` (or only ``ids``) into ``out_root``.

    Deletes stale temp files, skips clips whose frame and wav both exist, prepares the
    rest (sequentially for ``workers == 1``, else in a process pool) and writes
    ``out_root/prepare_report.json``.  Per-clip failures are recorded, never raised.

    Args:
        window: the clip-window rule (default ``WindowRule()``: VGGSound ids, ``auto``).
        frame_size: store frames with this shorter side (``save_frame``); None: full frames.

    Returns:
        The report: ``{"videos", "out", "audio_seconds", "sample_rate", "frame_size", "window", "total",
        "done": [ids], "skipped": n, "failed": [{"id", "reason"}], "clips": {id: {"window": [a, b],
        "window_rule", "frame_time", "audio": [start, end], "video_seconds"}},
        "stale_temp_files_removed", "interrupted"}``; ``total = len(done) + skipped + len(failed)``;
        ``clips`` holds the clips prepared now and, carried over from the previous report, the
        skipped ones (seconds on each file's timeline).  ``interrupted`` is True when a
        KeyboardInterrupt stopped the run (the report is written, the interrupt re-raised).
    """
    workers = _check_workers(workers)
    audio_seconds = _check_audio_seconds(audio_seconds)
    frame_size = _check_frame_size(frame_size)
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
        if frame_path(out_root, clip_id).is_file() and audio_path(out_root, clip_id).is_file():
            skipped += 1
            if clip_id in previous:
                clips[clip_id] = previous[clip_id]
        else:
            tasks.append((clip_id, str(video), str(out_root), audio_seconds, rule, frame_size))

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


def verify_clip(root: str | os.PathLike[str], clip_id: str) -> list[str]:
    """Problems of one prepared clip under ``root``; empty when it is usable.

    ``missing frame`` / ``missing audio`` for absent files, ``frame does not decode: ...`` /
    ``audio does not decode: ...`` for files that do not decode completely, then the problems of
    the acceptance rule (``baselines.data.acceptance.clip_problems``) that ``prepare`` applied
    before writing and the data loader applies when loading: the same reasons.
    """
    problems: list[str] = []
    image = samples = None
    image_file = frame_path(root, clip_id)
    if not image_file.is_file():
        problems.append("missing frame")
    else:
        try:
            image = decode_frame(image_file)
        except ClipRejected as error:
            problems.append(error.reason)
    wav_file = audio_path(root, clip_id)
    if not wav_file.is_file():
        problems.append("missing audio")
    else:
        try:
            samples = decode_audio(wav_file)
        except ClipRejected as error:
            problems.append(error.reason)
    if image is not None and samples is not None:
        problems.extend(clip_problems(image, samples))
    elif image is not None:  # clip_problems is frame_problems + audio_problems: each half alone
        problems[:0] = frame_problems(image)
    elif samples is not None:
        problems.extend(audio_problems(*samples))
    return problems


def _verify_task(task: tuple[str, str]) -> list[str]:
    """Pool task for ``verify``: ``verify_clip(root, id)``."""
    return verify_clip(task[0], task[1])


def verify(
    root: str | os.PathLike[str], ids: Iterable[str], workers: int = 1
) -> list[dict[str, object]]:
    """Check every id's frame and wav under ``root`` against the acceptance rule (``verify_clip``).

    Returns:
        One ``{"id": id, "problems": [str, ...]}`` per id with problems, in ``ids`` order;
        an empty list when all are fine.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
        ValueError: an id is not a usable file stem.
    """
    workers = _check_workers(workers)
    ids = [_check_id(clip_id, "ids") for clip_id in ids]
    if not Path(root).is_dir():
        raise NotADirectoryError(f"root: expected a directory, got {str(root)!r}")
    tasks = [(str(root), clip_id) for clip_id in ids]
    if workers == 1:
        results = [_verify_task(task) for task in tasks]
    else:
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_verify_task, tasks, chunksize=64))
    return [
        {"id": clip_id, "problems": problems} for clip_id, problems in zip(ids, results) if problems
    ]


def write_ids(path: str | os.PathLike[str], ids: Sequence[str]) -> None:
    """Write ``ids`` one per line to ``path`` (atomically: a temp file then ``os.replace``).

    The file reads back with ``read_ids`` and every loader's ``--train-list`` / ``--test-list``.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        tmp.write_text("".join(f"{clip_id}\n" for clip_id in ids), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (not for options without one), and the description's line breaks kept."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 1."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = _Parser(
        prog="python -m baselines.prepare",
        formatter_class=_HelpFormatter,
        description=(
            "Extract the centre frame (ROOT/frames/<id>.jpg) and 16 kHz mono audio (ROOT/audio/<id>.wav)\n"
            "of each clip from downloaded videos <id>.<ext>, or --verify a prepared split.\n\n"
            "Clip window: a VGGSound id <11-char YouTube id>_<start second, 6 digits> names the 10 s clip\n"
            "[start, start + 10) of a YouTube video. With --window auto, an untrimmed download (longer than\n"
            "--clip-seconds + --window-tolerance) is cut to that window; a trimmed one (or another id scheme)\n"
            "is used whole. A window past the end of its video, or that does not fit, is a failed clip.\n"
            "Each clip's window and frame time are in ROOT/prepare_report.json."
        ),
    )
    parser.add_argument("--videos", type=Path, metavar="DIR", help="folder of downloaded videos <id>.<ext>")
    parser.add_argument("--out", type=Path, metavar="ROOT", help="output root (frames/, audio/, report)")
    parser.add_argument(
        "--verify", type=Path, metavar="ROOT",
        help="check the prepared clips of --ids under ROOT against the acceptance rule instead of preparing",
    )
    parser.add_argument(
        "--ids", type=Path, metavar="LIST",
        help="split file: one id per line (CSV first column) or a JSON list. When preparing: only these "
             "ids are prepared (a missing video is a failed clip); required with --verify",
    )
    parser.add_argument(
        "--write-clean", type=Path, metavar="CLEAN",
        help="with --verify: write the ids that pass, one per line in --ids order, to CLEAN",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes (the default is this machine's CPU count)")
    parser.add_argument(
        "--audio-seconds", type=float, default=10.0, metavar="S",
        help=f"seconds of audio to keep, centred on the centre frame (>= {MIN_AUDIO_SECONDS:g})",
    )
    parser.add_argument(
        "--window", choices=WINDOW_MODES, default="auto",
        help="clip window: 'auto' takes it from the id for videos longer than one clip and uses "
             "trimmed clips whole; 'from-id' always from the id; 'whole-file' never",
    )
    parser.add_argument(
        "--start-regex", default=VGGSOUND_ID_PATTERN, metavar="RE",
        help="regular expression matched against the whole id, with a named group (?P<start>...) in "
             "seconds and optionally (?P<end>...); e.g. '(?P<ytid>.{11})_(?P<start>\\d+)_(?P<end>\\d+)' "
             "for <ytid>_<start>_<end> ids",
    )
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS, metavar="S",
                        help="window length when the id names only its start")
    parser.add_argument(
        "--window-tolerance", type=float, default=WINDOW_TOLERANCE, metavar="S",
        help="slack in seconds: 'auto' cuts a video only when it is longer than --clip-seconds + S; "
             "a window may overrun the video's end by at most S",
    )
    parser.add_argument(
        "--frame-size", type=int, default=None, metavar="PX",
        help="store frames with their shorter side resized to PX (bicubic; never enlarged); 246 = the "
             "training transform's resize for 224 inputs, so the loader skips it (default: full frames)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    Prepare: 0 when the run completed (per-clip failures are in the report and the
    summary line).  Verify: 0 when every id is fine, 1 when some have problems.  User errors
    (bad or missing arguments, a missing folder or ids file, a malformed ids file, a bad
    --start-regex): one line on stderr naming the problem, status 1, no traceback.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected an int >= 1, got {args.workers}")
    if not (math.isfinite(args.audio_seconds) and args.audio_seconds >= MIN_AUDIO_SECONDS):
        parser.error(f"--audio-seconds: expected a finite number >= {MIN_AUDIO_SECONDS:g}, got {args.audio_seconds}")
    if args.verify is not None:
        if args.videos is not None or args.out is not None:
            parser.error("--verify ROOT cannot be combined with --videos/--out")
        if args.ids is None:
            parser.error("--verify ROOT needs --ids LIST")
    elif args.videos is None or args.out is None:
        parser.error("expected --videos DIR and --out ROOT (or --verify ROOT --ids LIST)")
    elif args.write_clean is not None:
        parser.error("--write-clean CLEAN goes with --verify ROOT --ids LIST")
    try:
        ids = read_ids(args.ids) if args.ids is not None else None
        if args.verify is not None:
            assert ids is not None
            problems = verify(args.verify, ids, workers=args.workers)
            for item in problems:
                print(f"{item['id']}\t" + "; ".join(item["problems"]))  # type: ignore[arg-type]
            print(f"verify: {len(ids)} ids, {len(ids) - len(problems)} ok, {len(problems)} with problems")
            if args.write_clean is not None:
                bad = {item["id"] for item in problems}
                clean = [clip_id for clip_id in ids if clip_id not in bad]
                write_ids(args.write_clean, clean)
                print(f"verify: wrote the {len(clean)} ids that pass to {args.write_clean}")
            return 1 if problems else 0
        rule = WindowRule(args.window, args.start_regex, args.clip_seconds, args.window_tolerance)
        report = prepare(
            args.videos, args.out, ids=ids, workers=args.workers,
            audio_seconds=args.audio_seconds, progress=not args.no_progress, window=rule,
            frame_size=args.frame_size,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = report["failed"]
    assert isinstance(failed, list)
    print(
        f"prepare: {report['total']} clips: {len(report['done'])} done, "  # type: ignore[arg-type]
        f"{report['skipped']} skipped, {len(failed)} failed "
        f"(report: {args.out / REPORT_NAME})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
