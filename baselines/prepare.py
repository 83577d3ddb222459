"""Turn downloaded videos into the on-disk layout the data loaders read (SPEC section 6).

For every video ``<id>.<ext>`` (``<id>`` is the file stem, e.g. the VGGSound id
``zpWuikVorYg_000032``) this writes

* ``ROOT/frames/<id>.jpg`` -- the centre frame, RGB, JPEG quality 95 (Pillow); with
  ``--frame-size PX`` its shorter side bicubic-resized to ``PX`` (``shrink_frame``; 246 is what the
  training transform resizes 224-pixel inputs to, so the loader then skips that resize);
* ``ROOT/audio/<id>.wav``  -- up to ``audio_seconds`` of audio centred on that frame's
  time, resampled to 16 kHz mono by FFmpeg's resampler (PyAV ``AudioResampler``,
  format ``s16``) and written as 16-bit PCM WAV (soundfile).

Definitions
-----------
Centre frame
    With ``N`` video packets (= frames) in the first video stream, the frame at index
    ``k = N // 2`` of the decoded frames in presentation order (for even ``N`` the later of
    the two middle frames).  At a constant frame rate ``fps`` starting at 0 this is the
    frame shown at the clip's midpoint ``N / (2 fps)``.  Its presentation time ``t_c``
    (seconds) centres the audio window.
Audio window
    Let ``n`` be the number of 16 kHz samples of the whole first audio stream, starting at
    time ``t_a`` (its first decoded frame), ``L = round(audio_seconds * 16000)`` and
    ``W = min(L, n)``.  The centre sample is ``c = round((t_c - t_a) * 16000)`` and the kept
    samples are ``[s, s + W)`` with ``s = clamp(c - W // 2, 0, n - W)``: centred on the
    frame where the stream allows, slid inwards (never shortened) at the stream's ends.  For
    10 s VGGSound clips the default ``audio_seconds = 10`` therefore keeps the whole clip,
    and the loader's 3 s centred crop is centred on the clip, as upstream does.
Too short
    A clip fails as "too short" when its video stream has no frames, when its audio stream
    holds less than ``MIN_AUDIO_SECONDS`` (1 s) of audio, or when the audio does not reach
    the centre frame's time (the pair would not be simultaneous).

Robustness
----------
* A clip whose two outputs both exist is skipped (existence only; ``--verify`` decodes).
* Outputs are written to ``<final name>.<pid>.tmp`` in the same directory and moved into
  place with ``os.replace``; a killed run leaves at most ``*.tmp`` files, which the next run
  deletes on start.  One run per ``ROOT`` at a time.
* Per-clip failures (missing video, unreadable container, no video / audio stream, too
  short, decode error, a worker process that crashed) never stop the run: each is recorded
  with its id and reason in ``ROOT/prepare_report.json`` and counted in the summary line.
  With ``--workers > 1`` a crashed worker process only costs the clips it was decoding:
  the clips in flight are re-run one at a time in fresh processes to find the culprit.

Command line
------------
``python -m baselines.prepare --videos DIR --out ROOT [--ids LIST] [--workers N]
[--audio-seconds 10] [--frame-size PX]`` prepares; ``python -m baselines.prepare --verify ROOT --ids LIST``
lists the ids that lack a frame or an audio file or whose files do not decode (exit
status 1 when it finds any).  ``LIST`` is a text file with one id per line (a CSV's first
column is used, so ``vggss_test.csv`` and ``flickr_test.csv`` work) or a JSON list of ids
or of objects with a ``"file"`` key (``vggss.json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av
import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from .data.annotations import load_id_list

__all__ = [
    "AUDIO_DIR",
    "ClipError",
    "DecodedClip",
    "FRAMES_DIR",
    "JPEG_QUALITY",
    "MIN_AUDIO_SECONDS",
    "REPORT_NAME",
    "SAMPLE_RATE",
    "VIDEO_EXTENSIONS",
    "audio_path",
    "audio_window",
    "clean_stale_temps",
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
]

SAMPLE_RATE = 16000
"""Output audio sample rate in Hz (SPEC section 6)."""
MIN_AUDIO_SECONDS = 1.0
"""Audio streams shorter than this many seconds fail as "too short"."""
JPEG_QUALITY = 95
FRAMES_DIR = "frames"
AUDIO_DIR = "audio"
REPORT_NAME = "prepare_report.json"
TMP_SUFFIX = ".tmp"
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts"}
)
"""Lower-case file suffixes that ``find_videos`` treats as videos."""

# Test hooks, read only in the worker wrapper ``_work`` (never by ``prepare_clip``):
# seconds to pause between writing the temp files and renaming them, and an id whose
# worker process exits abruptly (to exercise kill/resume and crash isolation).
_PAUSE_ENV = "MARGINNCE_PREPARE_TEST_PAUSE"
_CRASH_ENV = "MARGINNCE_PREPARE_TEST_CRASH_ID"
_IN_FLIGHT_PER_WORKER = 4


class ClipError(ValueError):
    """A clip that cannot be prepared; ``reason`` starts with the failure kind.

    Kinds: ``missing video``, ``unreadable container``, ``no video stream``,
    ``no audio stream``, ``too short``, ``decode error``; the runner adds ``worker crashed``
    and ``unexpected error`` (any other exception, e.g. a full disk).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedClip:
    """What ``decode_clip`` extracts from one video.

    Attributes:
        frame: centre frame, ``(H, W, 3)`` uint8 RGB.
        audio: kept audio window, ``(W,)`` int16 at ``SAMPLE_RATE`` Hz, mono.
        frame_time: presentation time ``t_c`` of the centre frame in seconds.
        frame_index: index ``k = N // 2`` of the centre frame.
        num_frames: number ``N`` of video frames.
        audio_start: time ``t_a`` of the first audio sample in seconds.
        audio_samples: number ``n`` of 16 kHz samples in the whole audio stream.
        window_start: index ``s`` of the first kept sample within the stream.
    """

    frame: np.ndarray
    audio: np.ndarray
    frame_time: float
    frame_index: int
    num_frames: int
    audio_start: float
    audio_samples: int
    window_start: int


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
    """Validate ``audio_seconds``: a finite real number > 0."""
    if isinstance(audio_seconds, bool) or not isinstance(audio_seconds, (int, float)):
        raise TypeError(f"audio_seconds: expected a float, got {type(audio_seconds).__name__}")
    if not math.isfinite(audio_seconds) or audio_seconds <= 0:
        raise ValueError(f"audio_seconds: expected a finite number > 0, got {audio_seconds!r}")
    return float(audio_seconds)


def _check_frame_size(frame_size: int | None) -> int | None:
    if frame_size is not None and (isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 1):
        raise ValueError(f"frame_size: expected None or an int >= 1, got {frame_size!r}")
    return frame_size


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


def _count_video_packets(video_path: Path) -> int:
    """Number of non-empty packets of the first video stream (demux only, no decoding)."""
    with _open(video_path) as container:
        if not container.streams.video:
            raise ClipError("no video stream")
        if not container.streams.audio:
            raise ClipError("no audio stream")
        try:
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size > 0)
        except av.FFmpegError as error:
            raise ClipError(f"decode error: demuxing video packets: {error}") from error


def decode_clip(video_path: str | os.PathLike[str], audio_seconds: float = 10.0) -> DecodedClip:
    """Decode the centre frame and the centred audio window of one video.

    Two passes: the first counts the video packets ``N`` without decoding; the second
    decodes video up to frame ``k = N // 2`` and the whole first audio stream, resampled
    to 16 kHz mono int16 as it is decoded.  See the module docstring for the window and
    the "too short" rules.

    Raises:
        ClipError: the clip cannot be used; ``reason`` says why.
        ValueError / TypeError: ``audio_seconds`` is not a finite number > 0.
    """
    audio_seconds = _check_audio_seconds(audio_seconds)
    video_path = Path(video_path)
    num_frames = _count_video_packets(video_path)
    if num_frames == 0:
        raise ClipError("too short: the video stream has no frames")
    target = num_frames // 2

    frame: np.ndarray | None = None
    frame_time: float | None = None
    decoded_video = 0
    audio_start: float | None = None
    chunks: list[np.ndarray] = []
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
                            if video_frame.time is not None:
                                frame_time = float(video_frame.time)
                            else:
                                rate = video_stream.average_rate or video_stream.guessed_rate
                                if not rate:
                                    raise ClipError(
                                        "decode error: the centre frame has no timestamp and the "
                                        "stream no frame rate"
                                    )
                                frame_time = target / float(rate)
                        decoded_video += 1
                else:
                    for audio_frame in packet.decode():
                        if audio_start is None:
                            audio_start = float(audio_frame.time) if audio_frame.time is not None else 0.0
                        for out in resampler.resample(audio_frame):
                            chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as error:
            raise ClipError(f"decode error: {error}") from error

    if frame is None or frame_time is None:
        raise ClipError(
            f"decode error: decoded {decoded_video} video frames from {num_frames} packets, "
            f"the centre frame is index {target}"
        )
    audio = np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)
    num_samples = int(audio.shape[0])
    if num_samples < round(MIN_AUDIO_SECONDS * SAMPLE_RATE):
        raise ClipError(
            f"too short: {num_samples / SAMPLE_RATE:.3f} s of audio, the minimum is "
            f"{MIN_AUDIO_SECONDS:g} s"
        )
    assert audio_start is not None  # num_samples > 0 implies a decoded audio frame
    audio_end = audio_start + num_samples / SAMPLE_RATE
    if not audio_start <= frame_time <= audio_end:
        raise ClipError(
            f"too short: the audio spans {audio_start:.3f}-{audio_end:.3f} s and misses the "
            f"centre frame at {frame_time:.3f} s"
        )
    centre = round((frame_time - audio_start) * SAMPLE_RATE)
    start, stop = audio_window(num_samples, centre, round(audio_seconds * SAMPLE_RATE))
    return DecodedClip(
        frame=frame,
        audio=np.ascontiguousarray(audio[start:stop]),
        frame_time=frame_time,
        frame_index=target,
        num_frames=num_frames,
        audio_start=audio_start,
        audio_samples=num_samples,
        window_start=start,
    )


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


def _temp_path(final: Path) -> Path:
    """Temp name beside ``final``: ``<name>.<pid>.tmp`` (ignored by the skip check)."""
    return final.with_name(f"{final.name}.{os.getpid()}{TMP_SUFFIX}")


def _prepare_clip(
    video_path: Path, out_root: Path, audio_seconds: float, pause_before_rename: float = 0.0,
    frame_size: int | None = None,
) -> str:
    """``prepare_clip`` with an optional pause between writing temps and renaming (test hook)."""
    clip_id = _check_id(video_path.stem, "video_path")
    clip = decode_clip(video_path, audio_seconds)
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
    return clip_id


def prepare_clip(
    video_path: str | os.PathLike[str], out_root: str | os.PathLike[str], audio_seconds: float = 10.0,
    frame_size: int | None = None,
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
    return _prepare_clip(video_path, Path(out_root), _check_audio_seconds(audio_seconds),
                         frame_size=_check_frame_size(frame_size))


def _work(task: tuple[str, str, str, float, int | None]) -> tuple[str, str | None]:
    """Pool task: prepare one clip and return ``(id, None)`` or ``(id, reason)``; never raises."""
    clip_id, video, out_root, audio_seconds, frame_size = task
    if os.environ.get(_CRASH_ENV) == clip_id:
        os._exit(70)
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    try:
        _prepare_clip(Path(video), Path(out_root), audio_seconds, pause_before_rename=pause, frame_size=frame_size)
    except ClipError as error:
        return clip_id, error.reason
    except Exception as error:  # anything else is recorded, never allowed to stop the run
        return clip_id, f"unexpected error: {type(error).__name__}: {error}"
    return clip_id, None


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
    tasks: Sequence[tuple[str, str, str, float]],
    workers: int,
    on_result: Callable[[str, str | None], None],
) -> None:
    """Run ``_work`` over ``tasks`` in processes, calling ``on_result(id, reason)`` for each.

    At most ``_IN_FLIGHT_PER_WORKER * workers`` tasks are submitted at a time.  If a worker
    process dies, the pool breaks and every unfinished task in flight is re-run alone in a
    fresh one-process pool; a task that kills that one too is reported as
    ``worker crashed``.  Then a fresh pool carries on with the remaining tasks.
    """
    pending = deque(tasks)
    while pending:
        suspects: list[tuple[str, str, str, float]] = []
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            in_flight: dict[cf.Future[tuple[str, str | None]], tuple[str, str, str, float]] = {}
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
                    on_result(task[0], "worker crashed: the worker process died while preparing this clip")


def _write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temp file and ``os.replace``."""
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare(
    videos_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    workers: int = 1,
    audio_seconds: float = 10.0,
    progress: bool = True,
    frame_size: int | None = None,
) -> dict[str, object]:
    """Prepare every video of ``videos_dir`` (or only ``ids``) into ``out_root``.

    Deletes stale temp files, skips clips whose frame and wav both exist, prepares the
    rest (sequentially for ``workers == 1``, else in a process pool) and writes
    ``out_root/prepare_report.json``.  Per-clip failures are recorded, never raised.

    Returns:
        The report: ``{"videos", "out", "audio_seconds", "sample_rate", "frame_size", "total",
        "done": [ids], "skipped": n, "failed": [{"id", "reason"}], "stale_temp_files_removed",
        "interrupted"}``; ``total = len(done) + skipped + len(failed)``.  ``interrupted`` is
        True when a KeyboardInterrupt stopped the run (the report is written, the
        interrupt re-raised).
    """
    workers = _check_workers(workers)
    audio_seconds = _check_audio_seconds(audio_seconds)
    frame_size = _check_frame_size(frame_size)
    if ids is not None:
        ids = [_check_id(clip_id, "ids") for clip_id in ids]
    videos, missing = find_videos(videos_dir, ids)
    out_root = Path(out_root)
    (out_root / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    (out_root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    stale = clean_stale_temps(out_root)

    done: list[str] = []
    failed: list[dict[str, str]] = [
        {"id": clip_id, "reason": f"missing video: no {clip_id}.<video extension> in {str(videos_dir)!r}"}
        for clip_id in missing
    ]
    tasks: list[tuple[str, str, str, float, int | None]] = []
    skipped = 0
    for clip_id, video in videos.items():
        if frame_path(out_root, clip_id).is_file() and audio_path(out_root, clip_id).is_file():
            skipped += 1
        else:
            tasks.append((clip_id, str(video), str(out_root), audio_seconds, frame_size))

    bar = tqdm(total=len(tasks), desc="prepare", unit="clip", disable=not progress, dynamic_ncols=True)

    def on_result(clip_id: str, reason: str | None) -> None:
        if reason is None:
            done.append(clip_id)
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
            "total": len(videos) + len(missing),
            "done": sorted(done),
            "skipped": skipped,
            "failed": sorted(failed, key=lambda item: item["id"]),
            "stale_temp_files_removed": stale,
            "interrupted": interrupted,
        }
        _write_json_atomic(out_root / REPORT_NAME, report)
    return report


def verify_clip(root: str | os.PathLike[str], clip_id: str) -> list[str]:
    """Problems of one prepared clip; empty when its frame and wav exist and decode.

    Checks: the jpg exists and fully decodes to a non-empty image; the wav exists, is
    16 kHz mono, fully decodes and holds at least one sample.
    """
    problems: list[str] = []
    image_file = frame_path(root, clip_id)
    if not image_file.is_file():
        problems.append("missing frame")
    else:
        try:
            with Image.open(image_file) as image:
                image.load()
                if image.width < 1 or image.height < 1:
                    problems.append(f"frame: empty image {image.width}x{image.height}")
        except Exception as error:
            problems.append(f"frame does not decode: {type(error).__name__}: {error}")
    wav_file = audio_path(root, clip_id)
    if not wav_file.is_file():
        problems.append("missing audio")
    else:
        try:
            data, rate = sf.read(wav_file, dtype="int16", always_2d=True)
            if rate != SAMPLE_RATE:
                problems.append(f"audio: expected {SAMPLE_RATE} Hz, got {rate} Hz")
            if data.shape[1] != 1:
                problems.append(f"audio: expected 1 channel, got {data.shape[1]}")
            if data.shape[0] == 0:
                problems.append("audio: no samples")
        except Exception as error:
            problems.append(f"audio does not decode: {type(error).__name__}: {error}")
    return problems


def _verify_task(task: tuple[str, str]) -> list[str]:
    """Pool task for ``verify``: ``verify_clip(root, id)``."""
    return verify_clip(task[0], task[1])


def verify(
    root: str | os.PathLike[str], ids: Iterable[str], workers: int = 1
) -> list[dict[str, object]]:
    """Check that every id has a decodable frame and wav under ``root``.

    Returns:
        One ``{"id": id, "problems": [str, ...]}`` per id with problems, in ``ids`` order;
        an empty list when all are fine.
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


def _parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m baselines.prepare",
        description=(
            "Extract the centre frame (ROOT/frames/<id>.jpg) and 16 kHz mono audio "
            "(ROOT/audio/<id>.wav) from downloaded videos, or --verify a prepared split."
        ),
    )
    parser.add_argument("--videos", type=Path, metavar="DIR", help="folder of downloaded videos <id>.<ext>")
    parser.add_argument("--out", type=Path, metavar="ROOT", help="output root (frames/, audio/, report)")
    parser.add_argument("--verify", type=Path, metavar="ROOT", help="check a prepared ROOT for --ids instead")
    parser.add_argument(
        "--ids", type=Path, metavar="LIST",
        help="split file: one id per line (CSV first column) or a JSON list; required with --verify",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help="worker processes (default: number of CPUs)",
    )
    parser.add_argument(
        "--audio-seconds", type=float, default=10.0, metavar="S",
        help="seconds of audio to keep, centred on the centre frame (default 10)",
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
    summary line).  Verify: 0 when every id is fine, 1 when some have problems.  Bad
    arguments: 2.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected an int >= 1, got {args.workers}")
    if not (math.isfinite(args.audio_seconds) and args.audio_seconds > 0):
        parser.error(f"--audio-seconds: expected a finite number > 0, got {args.audio_seconds}")
    if args.verify is not None:
        if args.videos is not None or args.out is not None:
            parser.error("--verify ROOT cannot be combined with --videos/--out")
        if args.ids is None:
            parser.error("--verify ROOT needs --ids LIST")
    elif args.videos is None or args.out is None:
        parser.error("expected --videos DIR and --out ROOT (or --verify ROOT --ids LIST)")
    try:
        ids = read_ids(args.ids) if args.ids is not None else None
        if args.verify is not None:
            assert ids is not None
            problems = verify(args.verify, ids, workers=args.workers)
            for item in problems:
                print(f"{item['id']}\t" + "; ".join(item["problems"]))  # type: ignore[arg-type]
            print(f"verify: {len(ids)} ids, {len(ids) - len(problems)} ok, {len(problems)} with problems")
            return 1 if problems else 0
        report = prepare(
            args.videos, args.out, ids=ids, workers=args.workers,
            audio_seconds=args.audio_seconds, progress=not args.no_progress, frame_size=args.frame_size,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
