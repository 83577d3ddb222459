"""The one rule that decides whether a clip is usable, shared by ``prepare``, ``--verify`` and the dataset.

A clip is its center frame and its audio.  It is usable when

* the frame decodes completely to an image of at least 1 x 1 pixels in an 8-bit colour mode that
  converts to RGB without loss of range (``FRAME_MODES``: 1, L, LA, La, P, PA, RGB, RGBA, RGBa, RGBX,
  CMYK, YCbCr; a 16-bit or float image would be clipped to 255 by ``convert("RGB")`` and is refused);
* the audio decodes completely and is ``SAMPLE_RATE`` (16 kHz) with ``CHANNELS`` (1) channel,
  holds at least ``MIN_AUDIO_SECONDS`` (1 s) of samples, and every sample is finite (no NaN, no
  +-Inf: one such sample turns every spectrogram frame it reaches, the loss and the weights into NaN).

``clip_problems`` is that rule on decoded data; it lists every problem, in the order above, each
starting with its kind (``frame:``, ``audio:``, ``too short:``, ``non-finite audio:``).  Who calls it:

* ``marginnce_kit.prepare`` on the frame and audio window it is about to write (nothing is written when
  it finds a problem), and on the finiteness of the whole decoded audio stream (``nonfinite_reason``);
* ``prepare --verify`` (``verify_clip``) on the files of a prepared root, via ``frame_part`` and
  ``audio_part`` (the two halves of ``load_clip``);
* ``AudioVisualDataset`` on every clip it loads, via ``load_clip``; a clip that breaks the rule becomes
  a ``FailedSample`` with the same reason ``--verify`` prints.

Decoding failures have their own kinds: ``frame does not decode: ...`` and ``audio does not decode:
...``; a missing file is ``missing frame`` / ``missing audio`` (``verify``) or the dataset's
``missing frame <path>`` found before loading.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._checks import check_int

__all__ = [
    "CHANNELS",
    "ClipRejected",
    "FRAME_MODES",
    "MIN_AUDIO_SECONDS",
    "SAMPLE_RATE",
    "audio_part",
    "audio_problems",
    "clip_problems",
    "INTEGER_PCM_SUBTYPES",
    "decode_audio",
    "decode_audio_window",
    "decode_frame",
    "frame_part",
    "frame_problems",
    "load_clip",
    "nonfinite_counts",
    "nonfinite_reason",
    "too_short_reason",
]

SAMPLE_RATE: int = 16000
"""Audio sample rate of a prepared clip in Hz."""
CHANNELS: int = 1
"""Audio channels of a prepared clip (mono)."""
MIN_AUDIO_SECONDS: float = 1.0
"""Shortest usable audio in seconds (shorter clips are tiled to 3 s by the loader; below 1 s the tiling
would repeat a fragment more than three times)."""
FRAME_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
"""Pillow image modes accepted for a frame: 8-bit modes whose ``convert("RGB")`` keeps the value range."""


class ClipRejected(ValueError):
    """A clip breaks the acceptance rule; ``reason`` holds its problems joined by ``"; "``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def too_short_reason(num_samples: int, sample_rate: int) -> str:
    """``"too short: 0.500 s of audio, the minimum is 1 s"`` for ``num_samples`` at ``sample_rate`` Hz."""
    seconds = num_samples / sample_rate
    shown = f"{seconds:.3f}"
    if float(shown) >= MIN_AUDIO_SECONDS:  # 15999 samples at 16 kHz: "1.000 s" would hide why
        shown = f"{seconds:.6f}"
    return f"too short: {shown} s of audio, the minimum is {MIN_AUDIO_SECONDS:g} s"


def nonfinite_counts(samples: np.ndarray) -> tuple[int, int, int, int | None]:
    """``(n_nan, n_pos_inf, n_neg_inf, first)`` of an audio array ``[n]`` or ``[n, channels]``.

    ``first`` is the index (along axis 0, the time axis) of the first sample with a non-finite value in
    any channel, ``None`` when all are finite.  Integer arrays are finite by construction.
    """
    a = np.asarray(samples)
    if a.dtype.kind not in "fc" or a.size == 0:
        return 0, 0, 0, None
    bad = ~np.isfinite(a)
    if not bad.any():
        return 0, 0, 0, None
    rows = bad.reshape(a.shape[0], -1).any(axis=1)
    return int(np.isnan(a).sum()), int(np.isposinf(a).sum()), int(np.isneginf(a).sum()), int(rows.argmax())


def nonfinite_reason(n_nan: int, n_pos_inf: int, n_neg_inf: int, first_seconds: float) -> str:
    """``"non-finite audio: 1 NaN, 0 +Inf, 0 -Inf values, the first at 0.500 s"``."""
    return (
        f"non-finite audio: {n_nan} NaN, {n_pos_inf} +Inf, {n_neg_inf} -Inf values, "
        f"the first at {first_seconds:.3f} s"
    )


def audio_problems(samples: np.ndarray, sample_rate: int, num_samples: int | None = None) -> list[str]:
    """Problems of decoded audio ``[n]`` or ``[n, channels]`` at ``sample_rate`` Hz (empty: usable).

    In this order: ``audio: expected 16000 Hz, got R Hz``; ``audio: expected 1 channel, got C``;
    ``too short: ...`` (fewer than ``round(MIN_AUDIO_SECONDS * sample_rate)`` samples);
    ``non-finite audio: ...`` (counts of NaN, +Inf and -Inf values and the time of the first).
    ``num_samples``: the file's length when ``samples`` is a window of it (:func:`decode_audio`
    with ``window``; only for integer PCM, whose values are all finite); ``None``: ``len(samples)``.

    Raises:
        ValueError: ``samples`` is not 1-D or 2-D.
    """
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"samples: expected shape [n] or [n, channels], got {tuple(a.shape)}")
    problems = []
    if sample_rate != SAMPLE_RATE:
        problems.append(f"audio: expected {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    if a.shape[1] != CHANNELS:
        problems.append(f"audio: expected {CHANNELS} channel, got {a.shape[1]}")
    n = a.shape[0] if num_samples is None else num_samples
    if n < round(MIN_AUDIO_SECONDS * sample_rate):
        problems.append(too_short_reason(n, sample_rate))
    n_nan, n_pos, n_neg, first = nonfinite_counts(a)
    if first is not None:
        problems.append(nonfinite_reason(n_nan, n_pos, n_neg, first / sample_rate))
    return problems


def frame_problems(image) -> list[str]:
    """Problems of a decoded frame (a ``PIL.Image``); empty: usable."""
    problems = []
    if image.mode not in FRAME_MODES:
        problems.append(
            f"frame: unsupported colour mode {image.mode!r} (expected one of {', '.join(sorted(FRAME_MODES))})"
        )
    if image.width < 1 or image.height < 1:
        problems.append(f"frame: empty image {image.width}x{image.height}")
    return problems


def clip_problems(frame, audio: tuple[np.ndarray, int]) -> list[str]:
    """THE acceptance rule: every problem of a decoded clip, frame first (empty: usable).

    Args:
        frame: the decoded center frame, a ``PIL.Image`` (any mode; see ``FRAME_MODES``).
        audio: ``(samples, sample_rate)``, samples ``[n]`` or ``[n, channels]`` of any dtype
            (float values as decoded: NaN / Inf are looked for, not clipped away).

    Returns:
        ``frame_problems(frame) + audio_problems(*audio)``.

    Raises:
        ValueError: the samples are not 1-D or 2-D.
    """
    return frame_problems(frame) + audio_problems(*audio)


def decode_frame(path: str | os.PathLike[str]):
    """Open and fully decode an image file (Pillow; any format Pillow reads, e.g. a PNG named ``.jpg``).

    Returns:
        The ``PIL.Image`` in its own mode (not converted).

    Raises:
        ClipRejected: ``frame does not decode: <exception>`` (missing, truncated or garbage file).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()  # the data outlives the closed file
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        raise ClipRejected(f"frame does not decode: {type(error).__name__}: {error}") from error


#: WAV subtypes whose samples are integers (finite by construction) stored uncompressed: a window of
#: them can be read without decoding the rest, and the rest cannot fail to decode.
INTEGER_PCM_SUBTYPES: frozenset[str] = frozenset({"PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32"})


def decode_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode a whole audio file with soundfile as float64 ``[n, channels]`` (no clipping).

    Integer PCM is scaled to [-1, 1) (divided by 32768 for 16-bit); float files keep their values,
    NaN and Inf included, so that ``audio_problems`` sees them.

    Raises:
        ClipRejected: ``audio does not decode: <exception>``.
    """
    samples, rate, _ = decode_audio_window(path, None)
    return samples, rate


def decode_audio_window(path: str | os.PathLike[str], window: int | None) -> tuple[np.ndarray, int, int]:
    """``(samples, sample_rate, n)``: like :func:`decode_audio`, and ``n`` the file's length in samples.

    With ``window`` (a number of samples) and an integer-PCM WAV file (:data:`INTEGER_PCM_SUBTYPES`),
    only the centred ``window`` samples are read (from ``(n - window) // 2``; all ``n`` when
    ``n <= window``): the rule's other checks need only the header (rate, channels, length) and such
    samples are finite. Any other file is decoded whole (its later part may not decode, or hold NaN),
    and ``samples`` is all of it.

    Raises:
        ClipRejected: ``audio does not decode: <exception>``.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:  # one open: the header decides, then one read
            n = int(f.frames)
            if window is not None and n > window and f.format == "WAV" and f.subtype in INTEGER_PCM_SUBTYPES:
                f.seek((n - window) // 2)
                return f.read(window, dtype="float64", always_2d=True), int(f.samplerate), n
            data = f.read(dtype="float64", always_2d=True)
            rate = int(f.samplerate)
    except Exception as error:  # LibsndfileError, RuntimeError, OSError ...
        raise ClipRejected(f"audio does not decode: {type(error).__name__}: {error}") from error
    return data, rate, int(data.shape[0])


def frame_part(path: str | os.PathLike[str]):
    """``(image, problems)`` of a frame file: the decoded ``PIL.Image`` and :func:`frame_problems`, or
    ``(None, ["frame does not decode: ..."])``. The frame half of :func:`load_clip` and ``--verify``."""
    try:
        image = decode_frame(Path(path))
    except ClipRejected as error:
        return None, [error.reason]
    return image, frame_problems(image)


def audio_part(path: str | os.PathLike[str], window: int | None = None):
    """``(samples, sample_rate, problems)`` of an audio file (:func:`decode_audio_window`, then
    :func:`audio_problems` on the file's length), or ``(None, 0, ["audio does not decode: ..."])``.
    The audio half of :func:`load_clip` and ``--verify``.

    Raises:
        TypeError, ValueError: ``window`` is not ``None`` or an int >= 1.
    """
    if window is not None:
        check_int("window", window, 1)
    try:
        samples, rate, n = decode_audio_window(Path(path), window)
    except ClipRejected as error:
        return None, 0, [error.reason]
    return samples, rate, audio_problems(samples, rate, n)


def load_clip(frame_path: str | os.PathLike[str], audio_path: str | os.PathLike[str], window: int | None = None):
    """Decode a prepared clip's two files and apply the rule.

    ``window``: the loader needs only the centred ``window`` samples; for integer-PCM WAV files only
    those are read (:func:`decode_audio_window`; the same verdict and reason as a whole read, at
    about a third of the audio cost for 10 s clips and a 3 s window).

    Returns:
        ``(image, samples, sample_rate)``: the frame as decoded (an accepted 8-bit mode; convert it with
        ``marginnce_kit.data.frames._rgb_tensor``, which copies only when it is not RGB), the audio float64
        ``[n, channels]`` as decoded (with ``window``: at least the centred ``window`` samples, or all
        of a shorter file) and its rate, for a clip without problems.

    Raises:
        ClipRejected: every problem of the frame half, then of the audio half (:func:`frame_part`,
            :func:`audio_part`: decode failures or ``clip_problems``), joined by ``"; "`` -- the
            reason ``prepare --verify`` prints.
        TypeError, ValueError: ``window`` is not ``None`` or an int >= 1.
    """
    image, frame_problems_ = frame_part(frame_path)
    samples, rate, audio_problems_ = audio_part(audio_path, window)
    problems = frame_problems_ + audio_problems_
    if problems:
        raise ClipRejected("; ".join(problems))
    return image, samples, rate
