"""Small MP4 videos written with PyAV at test time for ``tests/test_prepare_orientation.py`` and
``tests/test_prepare_formats.py``: H.264 pictures of a known content, an optional display matrix (what a phone
writes for a portrait video), AAC audio.

The display matrix goes in with PyAV's ``VideoStream.set_display_rotation(degrees, hflip=...)`` (counterclockwise
degrees, read back as ``VideoFrame.rotation``) or ``set_display_matrix(9 ints)``; the MP4 muxer writes it into
the track header and the demuxer hands it to every decoded frame as side data.  Videos with neither carry none.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import av
import numpy as np

from . import fixtures

T = TypeVar("T")

FPS = fixtures.FPS
CODED = (48, 64)  # H, W of the coded pictures: landscape, as a phone stores a portrait video
BRIGHT, DARK = 250, 30
CORNER = (12, 16)  # H, W of the bright block in the coded picture's top-left corner


def can_write_display_matrix() -> bool:
    """Whether the installed PyAV can put a display matrix on an output stream (PyAV >= 15)."""
    from av.video.stream import VideoStream

    return hasattr(VideoStream, "set_display_rotation") and hasattr(VideoStream, "set_display_matrix")


def corner_picture() -> np.ndarray:
    """The coded ``(48, 64, 3)`` uint8 picture: dark, with a bright block in its top-left corner (nothing else
    is symmetric about it, so each of the 8 ways to turn or mirror it puts the block somewhere else)."""
    picture = np.full(CODED + (3,), DARK, np.uint8)
    picture[: CORNER[0], : CORNER[1]] = BRIGHT
    return picture


def textured_picture(seed: int = 0) -> np.ndarray:
    """A coded picture with detail in every pixel (smooth random colours), for exact-equality checks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (CODED[0] // 4, CODED[1] // 4, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)


def write_video(
    path: Path,
    picture: np.ndarray | None = None,
    rotation: float | None = None,
    hflip: bool = False,
    matrix: Sequence[int] | None = None,
    n_frames: int = 30,
    audio_seconds: float = 3.0,
) -> Path:
    """Write ``path`` (MP4): ``n_frames`` copies of ``picture`` (default :func:`corner_picture`) at 10 fps in
    H.264 and ``audio_seconds`` of a 440 Hz tone in AAC (44.1 kHz stereo).

    ``rotation`` / ``hflip``: ``set_display_rotation(rotation, hflip=hflip)``; ``matrix``: ``set_display_matrix``
    (FFmpeg's 9-int layout); neither: no display matrix.
    """
    picture = corner_picture() if picture is None else picture

    def configure(video: av.video.stream.VideoStream) -> None:
        if rotation is not None:
            video.set_display_rotation(rotation, hflip=hflip)
        if matrix is not None:
            video.set_display_matrix(list(matrix))

    return fixtures.write_video(path, n_frames=n_frames, audio_seconds=audio_seconds, picture=picture,
                                bit_rate=4_000_000, configure=configure)


def center_frame(path: Path, read: Callable[[av.VideoFrame], T]) -> T:
    """``read(frame)`` of the center frame (index ``N // 2`` in presentation order) of ``path``, decoded by PyAV
    directly (no rotation applied).

    ``read`` must return plain data (arrays, numbers), not PyAV objects: every PyAV object of the decode is
    released and collected before this returns, so that a process forked later (``prepare``'s worker pool)
    inherits none (one freed in a forked child can crash it at exit).
    """
    with av.open(str(path)) as container:
        frames = sorted(container.decode(video=0), key=lambda f: f.pts if f.pts is not None else 0)
        result = read(frames[len(frames) // 2])
        del frames
    gc.collect()
    return result
