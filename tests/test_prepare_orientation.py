"""``prepare`` stores the center frame as players display it: turned by the video's display matrix
(:mod:`marginnce_kit.prepare.orientation`), on MP4s written with a display matrix at test time
(``tests/rotated_videos.py``), and fails videos whose orientation it cannot read.

The coded pictures are landscape 64 x 48 with a bright block in their top-left corner; the expected place of the
block in the displayed picture is written out per rotation (the phone case, ``VideoFrame.rotation = -90``: turned
a quarter turn clockwise, the block ends at the top right), and the stored frames are compared with what
libavfilter's ``transpose`` / ``hflip`` / ``vflip`` filters -- the ones the ``ffmpeg`` command line's autorotation
inserts -- make of the decoded picture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from marginnce_kit import prepare as P  # noqa: E402

from .rotated_videos import (  # noqa: E402
    BRIGHT,
    CODED,
    CORNER,
    DARK,
    can_write_display_matrix,
    center_frame,
    write_video,
)

needs_display_matrix = pytest.mark.skipif(
    not can_write_display_matrix(), reason=f"PyAV {av.__version__} cannot write a display matrix"
)

#: set_display_rotation(degrees) -> (the rotation prepare applies and reports, where the bright block is shown)
CASES = {
    0: (0, "top-left"),
    -90: (-90, "top-right"),  # the phone case: a quarter turn clockwise
    270: (-90, "top-right"),  # the same turn, written the other way round
    90: (90, "bottom-left"),  # a quarter turn counterclockwise
    180: (180, "bottom-right"),
}


def corner_means(picture: np.ndarray, block: tuple[int, int]) -> dict[str, float]:
    """Mean level of a ``block``-sized patch in each corner of an ``(H, W, 3)`` picture."""
    h, w = block
    return {
        "top-left": float(picture[:h, :w].mean()),
        "top-right": float(picture[:h, -w:].mean()),
        "bottom-left": float(picture[-h:, :w].mean()),
        "bottom-right": float(picture[-h:, -w:].mean()),
    }


def stored(root, clip_id: str) -> np.ndarray:
    """The stored png frame of ``clip_id`` as an ``(H, W, 3)`` array."""
    with Image.open(P.frame_path(root, clip_id, "png")) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def ffmpeg_autorotate(frame: av.VideoFrame) -> np.ndarray:
    """``frame`` as the ``ffmpeg`` command line's autorotation shows it, computed by libavfilter: the filters that
    ``fftools/ffmpeg_filter.c`` (``configure_input_video_filter``) inserts for ``theta``, the clockwise angle of
    ``fftools/cmdutils.c`` ``get_rotation`` (``-av_display_rotation_get``, rounded, modulo 360): ``transpose=clock``
    for 90, ``hflip`` + ``vflip`` for 180, ``transpose=cclock`` for 270, none for 0 (the frames here carry no
    mirror, so the ``*_flip`` variants do not apply). The picture is converted to RGB first so that the
    comparison is of geometry only (the same conversion as PyAV's ``to_ndarray``)."""
    theta = -round(frame.rotation) % 360
    filters = {0: [], 90: [("transpose", "clock")], 180: [("hflip", None), ("vflip", None)],
               270: [("transpose", "cclock")]}[theta]
    rgb = frame.reformat(format="rgb24")
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=rgb.width, height=rgb.height, format="rgb24", time_base=frame.time_base)]
    for name, args in filters:
        chain.append(graph.add(name, args) if args is not None else graph.add(name))
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    rgb.pts = 0
    graph.push(rgb)
    return graph.pull().to_ndarray(format="rgb24")


@needs_display_matrix
@pytest.mark.parametrize("written", sorted(CASES))
def test_frame_is_stored_as_displayed(tmp_path, written):
    applied, where = CASES[written]
    videos = tmp_path / "videos"
    videos.mkdir()
    video = write_video(videos / "phone.mp4", rotation=written)
    report = P.prepare(videos, tmp_path / "out", progress=False, frame_format="png")
    assert report["done"] == ["phone"] and report["failed"] == []
    assert report["clips"]["phone"]["rotation"] == applied
    assert json.loads((tmp_path / "out" / P.REPORT_NAME).read_text())["clips"]["phone"]["rotation"] == applied

    frame = stored(tmp_path / "out", "phone")
    turned = applied in (90, -90)
    assert frame.shape == ((CODED[1], CODED[0], 3) if turned else CODED + (3,))
    block = (CORNER[1], CORNER[0]) if turned else CORNER
    means = corner_means(frame, block)
    assert means[where] > BRIGHT - 15, means
    assert all(level < DARK + 15 for corner, level in means.items() if corner != where), means

    # PyAV reads the same angle off the decoded frame (av_display_rotation_get writes 180 as -180) ...
    rotation, picture, autorotated = center_frame(
        video, lambda f: (f.rotation, f.to_ndarray(format="rgb24"), ffmpeg_autorotate(f)))
    assert rotation in ({applied, -180} if applied == 180 else {applied})
    # ... and the stored frame is that decoded picture as ffmpeg's autorotation filters show it, pixel for pixel
    np.testing.assert_array_equal(frame, autorotated)
    np.testing.assert_array_equal(frame, P.rotate_frame(picture, applied))


@needs_display_matrix
def test_unreadable_orientations_are_counted_failures(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "upright.mp4")
    write_video(videos / "tilted.mp4", rotation=45)  # the rotate filter's case: not a quarter turn
    write_video(videos / "mirrored.mp4", rotation=-90, hflip=True)
    write_video(videos / "near_quarter.mp4", rotation=-90.5)  # VideoFrame.rotation truncates this to -90
    # an all-zero rotation part: av_display_rotation_get gives NaN, VideoFrame.rotation an arbitrary int
    write_video(videos / "singular.mp4", matrix=[0] * 8 + [1 << 30])
    out = tmp_path / "out"
    assert P.main(["--videos", str(videos), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("prepare: 5 clips: 1 done, 0 skipped, 4 failed")
    report = json.loads((out / P.REPORT_NAME).read_text())
    assert report["done"] == ["upright"] and report["clips"]["upright"]["rotation"] == 0
    reasons = {item["id"]: item["reason"] for item in report["failed"]}
    assert set(reasons) == {"tilted", "mirrored", "near_quarter", "singular"}
    assert all(reason.startswith("unreadable orientation: ") for reason in reasons.values()), reasons
    assert "by 45.00 degrees counterclockwise, not a multiple of 90" in reasons["tilted"]
    assert "by -90.50 degrees" in reasons["near_quarter"]
    assert "mirrors the picture" in reasons["mirrored"]
    assert "is singular" in reasons["singular"]
    for clip_id in reasons:  # nothing written for a failed clip
        assert not P.frame_path(out, clip_id).exists() and not P.audio_path(out, clip_id).exists()
    with pytest.raises(P.ClipError, match="unreadable orientation"):
        P.decode_clip(videos / "tilted.mp4")


QUARTER = 1 << 16  # 1.0 in the matrix's 16.16 fixed point
W = 1 << 30  # the matrix's w entry (2.30 fixed point)


@pytest.mark.parametrize("matrix, rotation", [
    ([QUARTER, 0, 0, 0, QUARTER, 0, 0, 0, W], 0),
    ([0, QUARTER, 0, -QUARTER, 0, 0, 0, 0, W], -90),  # av_display_rotation_set(m, 90): 90 degrees clockwise
    ([0, -QUARTER, 0, QUARTER, 0, 0, 0, 0, W], 90),
    ([-QUARTER, 0, 0, 0, -QUARTER, 0, 0, 0, W], 180),
    ([0, 2 * QUARTER, 0, -3 * QUARTER, 0, 0, 100, 7, W], -90),  # scale and translation do not turn the picture
])
def test_matrix_rotation_reads_quarter_turns(matrix, rotation):
    assert P.matrix_rotation(np.array(matrix, np.int32)) == rotation


@pytest.mark.parametrize("matrix, reason", [
    ([46340, -46340, 0, 46340, 46340, 0, 0, 0, W], "by 45.00 degrees counterclockwise, not a multiple of 90"),
    ([-QUARTER, 0, 0, 0, QUARTER, 0, 0, 0, W], "mirrors the picture"),
    ([0, QUARTER, 0, QUARTER, 0, 0, 0, 0, W], "mirrors the picture"),
    ([0, 0, 0, 0, 0, 0, 0, 0, W], "is singular"),
    ([QUARTER, QUARTER, 0, QUARTER, QUARTER, 0, 0, 0, W], "is singular"),
    ([QUARTER, 0, 0, 0, QUARTER], "expected a display matrix of 9 int32 entries, got 5"),
])
def test_matrix_rotation_refuses_what_is_not_a_quarter_turn(matrix, reason):
    with pytest.raises(P.ClipError, match="unreadable orientation") as info:
        P.matrix_rotation(matrix)
    assert reason in info.value.reason


def test_rotate_frame_turns_counterclockwise_and_checks_its_angle():
    picture = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
    assert P.rotate_frame(picture, 0) is picture
    assert P.rotate_frame(picture, 90)[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]
    assert P.rotate_frame(picture, -90)[..., 0].tolist() == [[3, 0], [4, 1], [5, 2]]
    assert P.rotate_frame(picture, 180)[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    assert P.rotate_frame(picture, -90).flags["C_CONTIGUOUS"]
    for bad in (45, 270, True, 90.5, 90.0):
        with pytest.raises(ValueError, match="rotation: expected one of"):
            P.rotate_frame(picture, bad)


def test_a_video_without_display_matrix_reports_rotation_0(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "plain.mp4")
    assert P.main(["--videos", str(videos), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 0
    report = json.loads((tmp_path / "out" / P.REPORT_NAME).read_text())
    assert report["clips"]["plain"]["rotation"] == 0 and report["frame_format"] == "jpg"
    with Image.open(P.frame_path(tmp_path / "out", "plain")) as image:
        assert image.size == (CODED[1], CODED[0]) and image.format == "JPEG"
