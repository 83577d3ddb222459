"""Which seconds of a video make the clip: the window rule (from the id's start second, or the whole file) and
the audio window centered in the clip."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .ids import VGGSOUND_ID_PATTERN, ClipError

CLIP_SECONDS = 10.0

"""Length of a VGGSound clip in seconds (the window an id's start second opens)."""

WINDOW_TOLERANCE = 1.0

"""Seconds of slack in the window rule: a video is "clearly longer than one clip" when
``D > clip_seconds + WINDOW_TOLERANCE``; a window from the id may overrun the video's end by at most
this much (its end is then cut to the video's end).  It covers the few hundredths of a second that
re-encoding and audio padding add to a trimmed 10 s clip, with a wide margin."""

WINDOW_MODES = ("auto", "from-id", "whole-file")

"""``--window`` choices (see the module docstring)."""


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


def audio_window(num_samples: int, center: int, length: int) -> tuple[int, int]:
    """Sample range ``[s, s + W)`` of a window of ``W = min(length, num_samples)`` samples.

    ``s = clamp(center - W // 2, 0, num_samples - W)``: centered on ``center`` where the
    stream allows, slid inwards at its ends (see the module docstring).
    """
    if num_samples < 0 or length < 1:
        raise ValueError(
            f"audio_window: expected num_samples >= 0 and length >= 1, got {num_samples}, {length}"
        )
    width = min(length, num_samples)
    start = min(max(center - width // 2, 0), num_samples - width)
    return start, start + width


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
