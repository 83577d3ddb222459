"""``prepare --frame-format {jpg,png}``: png frames are the decoded frames exactly (lossless), the report records
the format, and ``--verify`` and the kit's dataset read the frames of the format the root was prepared with
(:func:`marginnce_kit.layout.root_frame_format`); a root holds one format."""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")
torch = pytest.importorskip("torch")

from marginnce_kit import layout  # noqa: E402
from marginnce_kit import prepare as P  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402
from marginnce_kit.data import AudioVisualDataset, DataError, FailedSample  # noqa: E402
from marginnce_kit.data.frames import resize_frame  # noqa: E402

from .rotated_videos import CODED, center_frame, textured_picture, write_video  # noqa: E402

IDS = ["clip_a", "clip_b"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two upright videos with detail in every pixel (no display matrix: the frame is the decoded picture)."""
    folder = tmp_path_factory.mktemp("videos")
    for seed, clip_id in enumerate(IDS):
        write_video(folder / f"{clip_id}.mp4", picture=textured_picture(seed), n_frames=11)
    return folder


def decoded(video) -> np.ndarray:
    """The center frame (index N // 2) decoded by PyAV directly, as RGB."""
    return center_frame(video, lambda frame: frame.to_ndarray(format="rgb24"))


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


@pytest.mark.parametrize("frame_size", [None, 32])
def test_png_frames_are_the_decoded_frames_exactly(videos, tmp_path, frame_size):
    report = P.prepare(videos, tmp_path, progress=False, frame_format="png", frame_size=frame_size)
    assert report["done"] == IDS and report["frame_format"] == "png"
    assert json.loads((tmp_path / P.REPORT_NAME).read_text())["frame_format"] == "png"
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"{i}.png" for i in IDS]
    for clip_id in IDS:
        expected = decoded(videos / f"{clip_id}.mp4")
        if frame_size is not None:
            expected = P.shrink_frame(expected, frame_size)
            assert expected.shape == (32, 42, 3)  # 64 x 48 -> shorter side 32
        else:
            assert expected.shape == CODED + (3,)
        np.testing.assert_array_equal(read_png(P.frame_path(tmp_path, clip_id, "png")), expected)


def test_jpg_stays_the_default_and_is_recorded(videos, tmp_path):
    report = P.prepare(videos, tmp_path, progress=False)
    assert report["frame_format"] == "jpg" and layout.root_frame_format(tmp_path) == "jpg"
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"{i}.jpg" for i in IDS]
    with Image.open(P.frame_path(tmp_path, IDS[0])) as image:
        assert image.format == "JPEG"


def test_a_second_run_skips_png_frames_and_a_root_holds_one_format(videos, tmp_path, capsys):
    out = tmp_path / "png"
    assert P.main(["--videos", str(videos), "--out", str(out), "--frame-format", "png", "--no-progress"]) == 0
    again = P.prepare(videos, out, progress=False, frame_format="png")
    assert (again["done"], again["skipped"]) == ([], len(IDS))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # jpg frames into a png root: refused, nothing written
        run_main(P.main, ["--videos", str(videos), "--out", str(out), "--no-progress"], prog="prepare")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frame_format: expected jpg frames, but" in err and "holds png frames" in err
    assert not list((out / "frames").glob("*.jpg"))
    assert json.loads((out / P.REPORT_NAME).read_text())["frame_format"] == "png"
    with pytest.raises(SystemExit) as exit_info:
        P.main(["--videos", str(videos), "--out", str(out), "--frame-format", "gif"])
    assert exit_info.value.code == 1
    assert "--frame-format: invalid choice: 'gif'" in capsys.readouterr().err


def test_verify_checks_the_format_the_root_was_prepared_with(videos, tmp_path, capsys):
    P.prepare(videos, tmp_path, progress=False, frame_format="png")
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(IDS) + "\n")
    assert P.verify(tmp_path, IDS) == []
    assert P.main(["--verify", str(tmp_path), "--ids", str(ids_file)]) == 0
    assert capsys.readouterr().out.strip() == f"verify: {len(IDS)} ids, {len(IDS)} ok, 0 with problems"
    # a jpg file beside the png root's frames does not stand in for its missing png
    png = P.frame_path(tmp_path, IDS[0], "png")
    Image.open(png).convert("RGB").save(P.frame_path(tmp_path, IDS[0], "jpg"), format="JPEG")
    png.unlink()
    assert P.verify(tmp_path, IDS) == [{"id": IDS[0], "problems": ["missing frame"]}]
    assert P.verify(tmp_path, IDS, frame_format="jpg") == [{"id": IDS[1], "problems": ["missing frame"]}]
    # the format comes from the report; a report that names no known format is a one-line user error
    report = json.loads((tmp_path / P.REPORT_NAME).read_text())
    (tmp_path / P.REPORT_NAME).write_text(json.dumps(report | {"frame_format": "gif"}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(P.main, ["--verify", str(tmp_path), "--ids", str(ids_file)], prog="prepare")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frame_format: expected one of jpg, png, got 'gif'" in err


def test_root_frame_format_reads_the_report(tmp_path):
    assert layout.root_frame_format(tmp_path) == "jpg"  # no report: a synthetic root, prepare_clip calls
    report = tmp_path / layout.PREPARE_REPORT
    report.write_text(json.dumps({"frame_size": None}))  # a report from before --frame-format
    assert layout.root_frame_format(tmp_path) == "jpg"
    report.write_text(json.dumps({"frame_format": "png"}))
    assert layout.root_frame_format(tmp_path) == "png"
    for text, message in (("[1, 2]", "expected a JSON object"), ("{", "prepare report"),
                          ('{"frame_format": "PNG"}', "expected one of jpg, png, got 'PNG'")):
        report.write_text(text)
        with pytest.raises(ValueError, match=message):
            layout.root_frame_format(tmp_path)
    assert layout.frame_path(tmp_path, "x", "png") == tmp_path / "frames" / "x.png"
    assert layout.frame_path(tmp_path, "x") == tmp_path / "frames" / "x.jpg"
    with pytest.raises(ValueError, match="frame_format: expected one of jpg, png, got 'bmp'"):
        layout.frame_path(tmp_path, "x", "bmp")
    with pytest.raises(ValueError, match="frame_format: expected one of jpg, png, got 'bmp'"):
        P.save_frame(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.bmp", frame_format="bmp")


def test_the_dataset_reads_a_png_root(videos, tmp_path):
    P.prepare(videos, tmp_path, progress=False, frame_format="png")
    dataset = AudioVisualDataset(tmp_path, IDS, split="test", normalize=False, image_size=32)
    assert dataset.frame_format == "png" and dataset.ids == IDS
    assert dataset.image_path(IDS[0]) == tmp_path / "frames" / f"{IDS[0]}.png"
    for index, clip_id in enumerate(IDS):
        item = dataset[index]
        assert not isinstance(item, FailedSample), item
        stored = torch.from_numpy(read_png(P.frame_path(tmp_path, clip_id, "png")).copy()).permute(2, 0, 1)
        assert torch.equal(item["frame"], resize_frame(stored, "test", 32))
        assert item["spectrogram"].shape == (1, 257, 200)
    assert dataset.failures.failed == {}
    # told jpg, the same root has no frames: every clip missing, past the failure budget
    with pytest.raises(DataError, match="missing frame"):
        AudioVisualDataset(tmp_path, IDS, split="test", frame_format="jpg")
    # nvJPEG decodes JPEG only: refused at construction, before any CUDA call
    with pytest.raises(ValueError, match="decode_device: expected 'cpu' for png frames"):
        AudioVisualDataset(tmp_path, IDS, split="test", decode_device="cuda")
