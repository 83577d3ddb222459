"""Decoding one clip with PyAV: probing the container, the clip's center frame and its audio, resampled to
16 kHz mono."""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..data.acceptance import (
    MIN_AUDIO_SECONDS,
    SAMPLE_RATE,
    clip_problems,
    nonfinite_counts,
    nonfinite_reason,
)
from .ids import ClipError
from .orientation import display_rotation, rotate_frame
from .window import WindowRule, audio_window, clip_window


@dataclass(frozen=True)
class DecodedClip:
    """What ``decode_clip`` extracts from one video.

    Attributes:
        frame: center frame as displayed, ``(H, W, 3)`` uint8 RGB: the decoded picture turned by ``rotation``.
        audio: kept audio window, ``(W,)`` int16 at ``SAMPLE_RATE`` Hz, mono.
        frame_time: presentation time ``t_c`` of the center frame in seconds (file timeline).
        frame_index: index ``k = N // 2`` of the center frame among the window's frames.
        num_frames: number ``N`` of video frames in the window.
        audio_start: time of the first kept-window sample of the stream, ``t_w``, in seconds
            (the stream's first decoded sample for a whole-file window).
        audio_samples: number ``n`` of 16 kHz samples of the stream inside the window.
        window_start: index ``s`` of the first kept sample within those ``n``.
        window: ``(a, b)`` the clip window in seconds (file timeline).
        window_rule: ``"from-id"`` or ``"whole-file"``: where the window came from.
        file_start: ``t0``, the file's first timestamp in seconds.
        file_seconds: ``D``, the file's length in seconds.
        rotation: the display rotation applied to the decoded picture, counterclockwise degrees, one of
            ``0, 90, 180, -90`` (:mod:`.orientation`).
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
    rotation: int = 0

    def report(self) -> dict[str, object]:
        """The clip's entry in ``prepare_report.json``'s ``clips`` (seconds, file timeline, 6 decimals)."""
        kept_start = self.audio_start + self.window_start / SAMPLE_RATE
        return {
            "window": [round(self.window[0], 6), round(self.window[1], 6)],
            "window_rule": self.window_rule,
            "frame_time": round(self.frame_time, 6),
            "audio": [round(kept_start, 6), round(kept_start + len(self.audio) / SAMPLE_RATE, 6)],
            "video_seconds": round(self.file_seconds, 6),
            "rotation": self.rotation,
        }


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

_FLOAT_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})


def decode_clip(
    video_path: str | os.PathLike[str], audio_seconds: float = 10.0, window: WindowRule | None = None
) -> DecodedClip:
    """Decode the center frame and the centered audio window of one video's clip window.

    Two passes: the first demuxes the packets (no decoding) for the frame times and the file's
    span, which fix the clip window and its center frame; the second decodes video up to that frame
    and the whole first audio stream, resampled to 16 kHz mono int16 as it is decoded (float
    samples are checked for NaN / Inf as decoded, before resampling).  The center frame is turned by
    its display matrix, as players show it (:mod:`.orientation`).  See the module docstring for
    the window, center-frame, audio-window and acceptance rules.

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
    rotation = 0
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
                            rotation = display_rotation(video_frame)  # ClipError: unreadable orientation
                            frame = rotate_frame(video_frame.to_ndarray(format="rgb24"), rotation)
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
            f"the center frame is index {target}"
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
                f"center frame at {frame_time:.3f} s"
            )
        center = round((frame_time - window_audio_start) * SAMPLE_RATE)
        start, stop = audio_window(num_samples, center, round(audio_seconds * SAMPLE_RATE))
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
        rotation=rotation,
    )
