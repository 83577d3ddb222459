"""``marginnce_kit.prepare``'s checks and command line on small real video files written with PyAV
(tests/fixtures.py, the ``videos`` fixture of tests/conftest.py): verify (missing and undecodable outputs, a complete
split, ``--verify``), the id files (text, CSV, JSON, the real VGG-SS and Flickr splits), finding the videos, argument
errors (one line on stderr, status 1), ``--help``. Preparing itself is in test_prepare.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")

from marginnce_kit import prepare as P  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402

from .conftest import UPSTREAM_METADATA  # noqa: E402

METADATA = UPSTREAM_METADATA / "ezvsl"


# --------------------------------------------------------------------------------------
# verify


def test_verify_lists_missing_and_undecodable_files(videos, tmp_path, capsys):
    folder, specs = videos
    P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    a, b, c = sorted(specs)
    ids_file = tmp_path / "split.txt"
    ids_file.write_text("\r\n".join([a, b, c, "never_prepared"]) + "\r\n")  # CRLF, like vggss_test.csv

    P.audio_path(tmp_path, a).unlink()
    jpg = P.frame_path(tmp_path, b)
    jpg.write_bytes(jpg.read_bytes()[:200])  # cut JPEG
    sf.write(P.audio_path(tmp_path, c), np.zeros((800, 2), np.int16), 8000, subtype="PCM_16")
    problems = {item["id"]: item["problems"] for item in P.verify(tmp_path, P.read_ids(ids_file), workers=2)}
    assert problems == {
        a: ["missing audio"],
        b: [problems[b][0]],
        c: ["audio: expected 16000 Hz, got 8000 Hz", "audio: expected 1 channel, got 2",
            "too short: 0.100 s of audio, the minimum is 1 s"],
        "never_prepared": ["missing frame", "missing audio"],
    }
    assert problems[b][0].startswith("frame does not decode")

    capsys.readouterr()
    assert P.main(["--verify", str(tmp_path), "--ids", str(ids_file), "--workers", "1"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(line.split("\t")[0] for line in lines[:-1]) == sorted(problems)
    assert lines[-1] == "verify: 4 ids, 0 ok, 4 with problems"


def test_verify_passes_a_complete_split(videos, tmp_path, capsys):
    folder, specs = videos
    P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    ids_file = tmp_path / "split.json"
    ids_file.write_text(json.dumps([{"file": clip_id, "bbox": []} for clip_id in specs]))
    assert P.main(["--verify", str(tmp_path), "--ids", str(ids_file)]) == 0
    assert capsys.readouterr().out.strip() == "verify: 3 ids, 3 ok, 0 with problems"


# --------------------------------------------------------------------------------------
# ids, arguments


def test_read_ids_formats(tmp_path):
    (tmp_path / "a.txt").write_text("x_000001\r\n\r\n y_000002 \n")
    assert P.read_ids(tmp_path / "a.txt") == ["x_000001", "y_000002"]
    (tmp_path / "dup.txt").write_text("x_000001\ny_000002\nx_000001\n")
    with pytest.raises(ValueError, match=r"dup.txt:3: duplicate clip id 'x_000001'"):  # the loaders' reader
        P.read_ids(tmp_path / "dup.txt")
    (tmp_path / "b.csv").write_text("10000130166,202\n10007936344,0\n")
    assert P.read_ids(tmp_path / "b.csv") == ["10000130166", "10007936344"]
    (tmp_path / "c.json").write_text(json.dumps(["a", {"file": "b", "class": "x"}]))
    assert P.read_ids(tmp_path / "c.json") == ["a", "b"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="at least one id"):
        P.read_ids(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_text("ok\n../escape\n")
    with pytest.raises(ValueError, match="escape"):
        P.read_ids(tmp_path / "bad.txt")
    (tmp_path / "bad.json").write_text(json.dumps([{"name": "a"}]))
    with pytest.raises(ValueError, match="entry 0"):
        P.read_ids(tmp_path / "bad.json")


@pytest.mark.skipif(not METADATA.is_dir(), reason="upstream metadata not available")
def test_read_ids_real_vggss_splits():
    test_ids = P.read_ids(METADATA / "vggss_test.csv")
    assert len(test_ids) == 5158 and test_ids[0] == "zpWuikVorYg_000032"
    assert P.read_ids(METADATA / "vggss.json") == test_ids
    flickr = P.read_ids(METADATA / "flickr_test.csv")  # 249 lines in the pinned upstream file
    assert len(flickr) == 249 and flickr[0] == "10000130166"
    heard = P.read_ids(METADATA / "vggss_heard.txt")
    assert heard[0] == "--8puiAGLhs_000030"


def test_find_videos_rejects_two_files_for_one_id(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "a.MKV").write_bytes(b"")
    (tmp_path / "b.webm").write_bytes(b"")
    (tmp_path / ".hidden.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="a.MKV, a.mp4"):
        P.find_videos(tmp_path)
    videos, missing = P.find_videos(tmp_path, ["b", "c"])
    assert videos == {"b": tmp_path / "b.webm"} and missing == ["c"]
    with pytest.raises(NotADirectoryError, match="videos_dir"):
        P.find_videos(tmp_path / "b.webm")


def test_argument_errors(videos, tmp_path, capsys):
    folder, _ = videos
    for bad, exc in [(0.0, ValueError), (0.99, ValueError), (math.nan, ValueError), (-1.0, ValueError),
                     (True, TypeError), ("3", TypeError)]:
        with pytest.raises(exc, match="audio_seconds"):
            P.prepare(folder, tmp_path, audio_seconds=bad, progress=False)
    with pytest.raises(ValueError, match="workers"):
        P.prepare(folder, tmp_path, workers=0, progress=False)
    with pytest.raises(P.ClipError, match="missing video"):
        P.prepare_clip(folder / "nope.mp4", tmp_path)
    with pytest.raises(P.ClipError, match="no audio stream"):
        P.prepare_clip(folder / "silent.mp4", tmp_path)
    assert P.prepare_clip(folder / "clip_c.mkv", tmp_path, audio_seconds=2.0) == "clip_c"
    assert sf.info(str(P.audio_path(tmp_path, "clip_c"))).frames == 32000
    capsys.readouterr()
    for argv in (["--verify", str(tmp_path)], ["--videos", str(folder)], ["--videos", str(folder), "--out",
                 str(tmp_path), "--audio-seconds", "0"], ["--workers", "two"], ["--window", "trim"]):
        with pytest.raises(SystemExit) as exit_info:
            P.main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m marginnce_kit.prepare: error: "), err
    # expected user errors: one line on stderr, status 1, no traceback
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(P.main, ["--videos", str(tmp_path / "absent"), "--out", str(tmp_path)], prog="python -m marginnce_kit.prepare")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m marginnce_kit.prepare: error: videos_dir") and "Traceback" not in err


def test_help_shows_defaults_and_what_ids_does(capsys):
    with pytest.raises(SystemExit) as exit_info:
        P.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: auto)", "(default: 10.0)", "(default: 1.0)", f"(default: {P.VGGSOUND_ID_PATTERN})"):
        assert default in text, default
    assert "When preparing: only these ids are prepared" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--write-clean CLEAN" in text and "--window {auto,from-id,whole-file}" in text


def test_bad_start_regex_and_write_clean_without_verify_are_user_errors(videos, tmp_path, capsys):
    folder, _ = videos
    with pytest.raises(SystemExit) as exit_info:
        run_main(P.main, ["--videos", str(folder), "--out", str(tmp_path), "--start-regex", "(no start group)"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "start-regex: expected a named group (?P<start>...)" in err
    with pytest.raises(SystemExit) as exit_info:
        P.main(["--videos", str(folder), "--out", str(tmp_path), "--write-clean", str(tmp_path / "c.txt")])
    assert exit_info.value.code == 1
    assert "--write-clean CLEAN goes with --verify" in capsys.readouterr().err
