"""Writing one prepared clip in the on-disk layout (:mod:`marginnce_kit.layout`): the frame (JPEG or PNG, optionally
shrunk) and the wav, each to a temporary file renamed into place."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from .._checks import check_int
from ..data.acceptance import (
    SAMPLE_RATE,
)
from ..io import temp_path
from ..layout import DEFAULT_FRAME_FORMAT, audio_path, check_frame_format, frame_path
from .decode import DecodedClip, _check_audio_seconds, decode_clip
from .ids import ClipError, _check_id
from .window import WindowRule

JPEG_QUALITY = 95

TMP_SUFFIX = ".tmp"


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
    check_int("short_side", short_side, 1)
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame: expected an (H, W, 3) uint8 array, got {getattr(frame, 'dtype', type(frame))} "
                         f"{getattr(frame, 'shape', '')}")
    h, w = frame.shape[:2]
    if min(h, w) <= short_side:
        return frame
    size = (int(short_side * w / h), short_side) if w >= h else (short_side, int(short_side * h / w))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


def save_frame(
    frame: np.ndarray, path: str | os.PathLike[str], frame_size: int | None = None,
    frame_format: str = DEFAULT_FRAME_FORMAT,
) -> None:
    """Write the center frame ``(H, W, 3)`` uint8 as a JPEG (``frame_format="jpg"``) or PNG (``"png"``) file, in
    that format whatever the name.

    JPEG, ``frame_size=None``: the full frame, quality ``JPEG_QUALITY`` (95), Pillow's default 4:2:0 chroma.
    Otherwise ``shrink_frame(frame, frame_size)`` at quality 95 with full-resolution chroma (4:4:4,
    ``subsampling=0``): at 4:2:0 the small frame would lose more colour detail than the loader's
    resize of a full frame does (the resize averages the JPEG error away); at 4:4:4 it is as close to
    the source frame as that resize is or closer, and decodes as fast (``benchmarks/data_loading.py``
    measures both: the ``vs source`` columns).  PNG (lossless, Pillow's default compression): the frame,
    or ``shrink_frame(frame, frame_size)``, exactly; it decodes back to the same pixels.

    Raises:
        ValueError: ``frame_format`` is not one of ``marginnce_kit.layout.FRAME_FORMATS``.
    """
    frame_format = check_frame_format(frame_format)
    picture = Image.fromarray(frame if frame_size is None else shrink_frame(frame, frame_size))
    if frame_format == "png":
        picture.save(path, format="PNG")
    elif frame_size is None:
        picture.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        picture.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _check_frame_size(frame_size: int | None) -> int | None:
    """``frame_size`` (``None``: full frames) checked: an int >= 1.

    Raises:
        TypeError, ValueError: as :func:`marginnce_kit._checks.check_int`.
    """
    return None if frame_size is None else check_int("frame_size", frame_size, 1)


def _prepare_clip(
    video_path: Path, out_root: Path, audio_seconds: float, window: WindowRule | None = None,
    pause_before_rename: float = 0.0, frame_size: int | None = None, frame_format: str = DEFAULT_FRAME_FORMAT,
) -> DecodedClip:
    """``prepare_clip`` with an optional pause between writing temps and renaming (test hook)."""
    clip_id = _check_id(video_path.stem, "video_path")
    clip = decode_clip(video_path, audio_seconds, window)
    frame_final = frame_path(out_root, clip_id, frame_format)
    audio_final = audio_path(out_root, clip_id)
    frame_final.parent.mkdir(parents=True, exist_ok=True)
    audio_final.parent.mkdir(parents=True, exist_ok=True)
    frame_tmp, audio_tmp = temp_path(frame_final), temp_path(audio_final)
    try:
        save_frame(clip.frame, frame_tmp, frame_size, frame_format)
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
    window: WindowRule | None = None, frame_size: int | None = None, frame_format: str = DEFAULT_FRAME_FORMAT,
) -> str:
    """Write ``out_root/frames/<id>.jpg`` (``frame_format="png"``: ``<id>.png``) and ``out_root/audio/<id>.wav``
    for one video.

    ``<id>`` is the video's file stem.  Existing outputs are overwritten; each file is
    written to a temp name and renamed, so it is either absent or complete.  Writes no report: a root of
    ``prepare_clip`` calls reads as a jpg root (``marginnce_kit.layout.root_frame_format``).

    Returns:
        The clip id.

    Raises:
        ClipError: the video cannot be used (``reason`` says why); nothing is written.
        ValueError: ``frame_format`` is not one of ``marginnce_kit.layout.FRAME_FORMATS``.
    """
    video_path = Path(video_path)
    frame_format = check_frame_format(frame_format)
    if not video_path.is_file():
        raise ClipError(f"missing video: {str(video_path)!r} is not a file")
    _prepare_clip(video_path, Path(out_root), _check_audio_seconds(audio_seconds), window,
                  frame_size=_check_frame_size(frame_size), frame_format=frame_format)
    return video_path.stem
