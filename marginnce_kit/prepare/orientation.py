"""A video's display orientation: the rotation players apply to its decoded pictures, read from the display matrix.

Phones record a portrait video as landscape pictures (coded e.g. 64 x 48) with a display matrix that tells a
player to turn them a quarter turn; players and the ``ffmpeg`` command line show the turned picture, and that
picture is the one VGG-SS-style boxes are drawn on.  ``prepare`` therefore stores the center frame as it is
displayed.

The matrix
    FFmpeg exports a stream's display matrix (MP4 ``tkhd`` matrix, ...) as ``AV_FRAME_DATA_DISPLAYMATRIX`` side
    data on every decoded frame: 9 native ``int32`` ``[a, b, u, c, d, v, x, y, w]``, ``a b c d x y`` in 16.16
    fixed point (``libavutil/display.h``).  PyAV gives it as ``frame.side_data[Type.DISPLAYMATRIX]`` and its
    rotation as ``VideoFrame.rotation`` (``av_display_rotation_get`` truncated to an int): "the angle (in
    degrees) by which the transformation rotates the frame counterclockwise", ``-(atan2(b, a))`` over the
    column norms (``display.h``).  :func:`matrix_rotation` reads the same angle from the raw matrix, exactly,
    and accepts it only when the matrix is an exact quarter-turn rotation (no mirror, no shear).

The convention (``rotation``, degrees)
    The counterclockwise angle of ``VideoFrame.rotation``: one of :data:`ROTATIONS` = ``0, 90, 180, -90``
    (``av_display_rotation_get`` returns 180 as -180; it is written 180 here).  The stored frame is the decoded
    picture turned counterclockwise by ``rotation`` (:func:`rotate_frame`: ``numpy.rot90(picture, rotation //
    90)``), which is what the ``ffmpeg`` command line's autorotation shows: ``fftools/cmdutils.c``
    ``get_rotation`` takes ``theta = -av_display_rotation_get(matrix)`` (rounded in later versions) modulo 360,
    clockwise degrees, and ``fftools/ffmpeg_filter.c`` ``configure_input_video_filter`` inserts
    ``transpose=clock`` for ``theta = 90``, ``hflip`` + ``vflip`` for 180 and ``transpose=cclock`` for 270
    (FFmpeg/FFmpeg@609285a; later versions pick the ``*_flip`` variants for mirrored matrices).  A phone's
    portrait video reads ``rotation = -90``: its pictures are turned a quarter turn clockwise, the coded top-left
    corner ending at the top right.  ``tests/test_prepare_orientation.py`` checks the stored frames against
    libavfilter's ``transpose`` / ``hflip`` / ``vflip`` run on the decoded picture.

Unreadable orientations (a failed clip, reason ``unreadable orientation: ...``; never a guess)
    a matrix that rotates by an angle that is not a multiple of 90 degrees (FFmpeg would insert its ``rotate``
    filter and fill the corners), one that mirrors the picture (determinant < 0; the ``rotation`` field could not
    say so), a singular one (``av_display_rotation_get`` gives NaN, which ``VideoFrame.rotation`` cannot
    return: PyAV 18.1 gives -2147483648 for an all-zero matrix), and side data that is not 9 ``int32``.  No
    matrix: rotation 0.  The matrix's perspective (``u v w``) and translation (``x y``) entries do not turn the
    picture and are not read.
"""

from __future__ import annotations

import math
from typing import cast

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType

from .ids import ClipError

#: The rotations ``prepare`` applies (counterclockwise degrees, ``VideoFrame.rotation``'s sign).
ROTATIONS = (0, 90, 180, -90)

_REASON = "unreadable orientation"


def matrix_rotation(matrix: np.ndarray | list[int]) -> int:
    """The counterclockwise rotation in degrees (one of :data:`ROTATIONS`) of a display matrix that is an exact
    quarter-turn rotation, with any positive scale (see the module docstring).

    Args:
        matrix: the 9 ``int32`` entries ``[a, b, u, c, d, v, x, y, w]`` (FFmpeg's layout).

    Raises:
        ClipError: ``unreadable orientation: ...`` -- not 9 entries, singular, mirrored, or an angle that is not a
            multiple of 90 degrees (the message gives the angle FFmpeg reads).
    """
    values = [int(v) for v in np.asarray(matrix).reshape(-1)]
    if len(values) != 9:
        raise ClipError(f"{_REASON}: expected a display matrix of 9 int32 entries, got {len(values)}")
    a, b, c, d = values[0], values[1], values[3], values[4]
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0 or a * d - b * c == 0:
        raise ClipError(f"{_REASON}: the display matrix {values} is singular (FFmpeg reads no rotation from it)")
    if a * d - b * c < 0:
        raise ClipError(f"{_REASON}: the display matrix {values} mirrors the picture (only rotations are applied)")
    if b == 0 and c == 0:
        return 0 if a > 0 else 180
    if a == 0 and d == 0:
        return -90 if b > 0 else 90
    degrees = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    raise ClipError(f"{_REASON}: the display matrix rotates the picture by {degrees:.2f} degrees counterclockwise, "
                    "not a multiple of 90")


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The display matrix on a decoded frame's side data, 9 ``int32`` (``None`` when it has none).

    Raises:
        ClipError: ``unreadable orientation: ...`` -- side data that is not 36 bytes.
    """
    # frame.side_data is a SideDataContainer (PyAV's frame.pyi types it as a TypedDict of motion vectors only)
    try:
        data = cast(SideDataContainer, frame.side_data)[SideDataType.DISPLAYMATRIX]
    except KeyError:
        return None
    raw = bytes(data)
    if len(raw) != 36:
        raise ClipError(f"{_REASON}: the display matrix side data holds {len(raw)} bytes, expected 36 (9 int32)")
    return np.frombuffer(raw, dtype=np.int32).copy()


def display_rotation(frame: av.VideoFrame) -> int:
    """The rotation ``prepare`` applies to ``frame`` (counterclockwise degrees, one of :data:`ROTATIONS`; 0
    without a display matrix).

    Raises:
        ClipError: ``unreadable orientation: ...`` (:func:`matrix_rotation`, :func:`display_matrix`).
    """
    matrix = display_matrix(frame)
    return 0 if matrix is None else matrix_rotation(matrix)


def rotate_frame(picture: np.ndarray, rotation: int) -> np.ndarray:
    """The decoded ``(H, W, C)`` picture turned counterclockwise by ``rotation`` degrees, as displayed: ``(W, H,
    C)`` for +-90; a C-contiguous array (the input itself for 0).

    Raises:
        ValueError: ``rotation`` is not one of :data:`ROTATIONS`, or ``picture`` has fewer than 2 dimensions.
    """
    if isinstance(rotation, bool) or not isinstance(rotation, int) or rotation not in ROTATIONS:
        raise ValueError(f"rotation: expected one of {ROTATIONS} (degrees), got {rotation!r}")
    if picture.ndim < 2:
        raise ValueError(f"picture: expected an (H, W, ...) array, got shape {picture.shape}")
    if rotation == 0:
        return picture
    return np.ascontiguousarray(np.rot90(picture, rotation // 90, axes=(0, 1)))
