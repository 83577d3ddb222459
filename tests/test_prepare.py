"""Tests for ``marginnce_kit.prepare`` on small real video files written with PyAV.

Each synthetic clip has frames whose colour encodes the frame index
(``R = 8 i, G = 255 - 8 i, B = 128``) and audio with a known signal at a rate that is not
16 kHz, so the saved center frame, the resampled audio's rate, length, frequency and
time alignment can all be checked against what was encoded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")

from marginnce_kit import prepare as P  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from .conftest import UPSTREAM_METADATA  # noqa: E402

METADATA = UPSTREAM_METADATA / "ezvsl"
FPS = 10
SIZE = (48, 64)  # H, W


def colour(i: int) -> np.ndarray:
    """RGB colour of frame ``i``."""
    return np.array([8 * i, 255 - 8 * i, 128], dtype=np.float64)


def tone(t: np.ndarray, freq: float = 440.0) -> np.ndarray:
    """The default test signal: a 0.5-amplitude sine."""
    return 0.5 * np.sin(2 * np.pi * freq * t)


def chirp(t: np.ndarray) -> np.ndarray:
    """Linear sweep 300 -> 1500 Hz over 3 s: no two instants look alike (checks alignment)."""
    return 0.5 * np.sin(2 * np.pi * (300.0 * t + 200.0 * t**2))


def write_video(
    path: Path,
    n_frames: int | None = 30,
    audio_seconds: float | None = 3.0,
    rate: int = 44100,
    vcodec: str = "libx264",
    acodec: str = "aac",
    signal_fn=tone,
) -> Path:
    """Write a clip: ``n_frames`` at 10 fps (None: no video stream) and ``audio_seconds`` of
    ``signal_fn`` at ``rate`` Hz (None: no audio stream).  AAC is written stereo (both
    channels equal), PCM mono."""
    with av.open(str(path), "w") as container:
        video = None
        if n_frames is not None:
            video = container.add_stream(vcodec, rate=FPS)
            video.height, video.width = SIZE
            video.pix_fmt = "yuv420p"
            video.bit_rate = 2_000_000  # solid colours survive to within a few levels
        audio = None
        if audio_seconds is not None:
            audio = container.add_stream(acodec, rate=rate)
            audio.layout = "stereo" if acodec == "aac" else "mono"
        if video is not None:
            for i in range(n_frames):
                image = np.empty(SIZE + (3,), np.uint8)
                image[...] = colour(i).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                for packet in video.encode(frame):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        if audio is not None:
            n = int(round(audio_seconds * rate))
            samples = np.round(signal_fn(np.arange(n) / rate) * 32767).astype(np.int16)
            step = 1024
            for pos in range(0, n, step):
                chunk = samples[pos : pos + step]
                if acodec == "aac":
                    frame = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(np.stack([chunk, chunk])), format="s16p", layout="stereo"
                    )
                else:
                    frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                frame.sample_rate = rate
                frame.pts = pos
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def good_clips(folder: Path) -> dict[str, dict]:
    """Write the well-formed clips; return id -> what was encoded."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        # VGGSound-style id, H.264 (B-frames) + AAC 44.1 kHz stereo in MP4.
        "zpWuikVorYg_000032": dict(suffix=".mp4", n_frames=30, rate=44100, vcodec="libx264", acodec="aac"),
        # odd frame count, MPEG-4 + 22.05 kHz PCM in Matroska: exact sample counts.
        "--8puiAGLhs_000030": dict(suffix=".mkv", n_frames=31, rate=22050, vcodec="mpeg4", acodec="pcm_s16le"),
        "clip_c": dict(suffix=".mkv", n_frames=30, rate=22050, vcodec="libx264", acodec="pcm_s16le"),
    }
    for clip_id, spec in specs.items():
        kwargs = {k: v for k, v in spec.items() if k != "suffix"}
        write_video(folder / f"{clip_id}{spec['suffix']}", **kwargs)
    return specs


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """A folder with three good clips and one of each kind of bad clip."""
    folder = tmp_path_factory.mktemp("videos")
    specs = good_clips(folder)
    good = folder / "zpWuikVorYg_000032.mp4"
    # MP4 keeps its index (moov) at the end: a cut file cannot be opened.
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "garbage.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    write_video(folder / "silent.mp4", n_frames=30, audio_seconds=None)
    write_video(folder / "audio_only.mkv", n_frames=None, acodec="pcm_s16le", rate=22050)
    write_video(folder / "short_audio.mkv", n_frames=30, audio_seconds=0.5, acodec="pcm_s16le", rate=22050)
    write_video(folder / "late_frame.mkv", n_frames=100, audio_seconds=2.0, acodec="pcm_s16le", rate=22050)
    (folder / "notes.txt").write_text("not a video")
    return folder, specs


BAD_REASONS = {
    "truncated": "unreadable container",
    "garbage": "unreadable container",
    "silent": "no audio stream",
    "audio_only": "no video stream",
    "short_audio": "too short",
    "late_frame": "too short",
}


def nearest_frame(jpg: Path) -> tuple[int, float]:
    """(index whose colour is nearest to the image's mean colour, that max channel error)."""
    mean = np.asarray(Image.open(jpg).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    errors = [np.abs(mean - colour(i)).max() for i in range(32)]
    best = int(np.argmin(errors))
    return best, float(errors[best])


def peak_frequency(x: np.ndarray, rate: int) -> float:
    """Frequency of the largest Hann-windowed FFT bin."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[spectrum.argmax()])


# --------------------------------------------------------------------------------------
# prepare: outputs


def test_prepare_writes_center_frame_and_16k_mono_audio(videos, tmp_path):
    folder, specs = videos
    report = P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    assert report["done"] == sorted(specs)
    assert report["failed"] == [] and report["skipped"] == 0
    for clip_id, spec in specs.items():
        index, error = nearest_frame(tmp_path / "frames" / f"{clip_id}.jpg")
        assert index == spec["n_frames"] // 2 == 15, clip_id
        assert error < 4.0, clip_id
        info = sf.info(str(tmp_path / "audio" / f"{clip_id}.wav"))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        x, rate = sf.read(tmp_path / "audio" / f"{clip_id}.wav", dtype="float64")
        if spec["acodec"] == "pcm_s16le":
            assert len(x) == 48000  # 3 s exactly
        else:  # AAC pads the last 1024-sample frame
            assert abs(len(x) / 16000 - 3.0) < 0.03
        assert abs(peak_frequency(x, rate) - 440.0) < 1.0
        assert 0.45 < np.abs(x).max() < 0.55
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == sorted(f"{i}.jpg" for i in specs)
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == sorted(f"{i}.wav" for i in specs)


@pytest.mark.parametrize("acodec, rate, tol", [("pcm_s16le", 22050, 2e-3), ("aac", 44100, 0.05)])
def test_audio_window_is_centered_on_the_center_frame(tmp_path, acodec, rate, tol):
    video = write_video(tmp_path / f"sweep.{'mkv' if acodec != 'aac' else 'mp4'}", acodec=acodec, rate=rate,
                        signal_fn=chirp)
    clip = P.decode_clip(video, audio_seconds=1.0)
    assert (clip.frame_index, clip.num_frames) == (15, 30)
    assert clip.frame_time == pytest.approx(1.5)
    assert clip.window_start == 16000 and clip.audio.shape == (16000,) and clip.audio.dtype == np.int16
    expected = chirp(1.0 + np.arange(16000) / 16000)
    assert np.abs(clip.audio / 32768.0 - expected).max() < tol
    # the same window, off by 2 ms, is clearly worse: the check above pins the position
    shifted = chirp(1.002 + np.arange(16000) / 16000)
    assert np.abs(clip.audio / 32768.0 - shifted).max() > 5 * tol


def test_audio_window_slides_inwards_at_the_stream_ends(tmp_path):
    video = write_video(tmp_path / "sweep.mkv", acodec="pcm_s16le", rate=22050, signal_fn=chirp)
    clip = P.decode_clip(video, audio_seconds=2.5)  # centered would be 0.25 .. 2.75 s: fits
    assert (clip.window_start, len(clip.audio)) == (4000, 40000)
    clip = P.decode_clip(video, audio_seconds=10.0)  # longer than the stream: whole stream
    assert (clip.window_start, len(clip.audio)) == (0, 48000)
    # frame at 1.5 s, audio 0 .. 4 s: a 3.5 s window centered on 1.5 s would start at -0.25 s,
    # so it slides to the start and keeps its length
    video = write_video(tmp_path / "long_audio.mkv", audio_seconds=4.0, acodec="pcm_s16le", rate=22050,
                        signal_fn=chirp)
    clip = P.decode_clip(video, audio_seconds=3.5)
    assert (clip.window_start, len(clip.audio), clip.audio_samples) == (0, 56000, 64000)
    assert clip.frame_time == pytest.approx(1.5)
    error = np.abs(clip.audio / 32768.0 - chirp(np.arange(56000) / 16000))
    assert error[32:].max() < 2e-3  # the first samples carry the resampling filter's onset
    assert error.max() < 1e-2


@given(
    n=st.integers(0, 5000),
    center=st.integers(-100, 5100),
    length=st.integers(1, 6000),
)
def test_audio_window_properties(n, center, length):
    start, stop = P.audio_window(n, center, length)
    width = min(length, n)
    assert 0 <= start <= stop <= n and stop - start == width
    if width // 2 <= center <= n - (width - width // 2):
        assert start == center - width // 2  # centered whenever it fits
    elif center < width // 2:
        assert start == 0
    else:
        assert stop == n


def test_audio_window_rejects_bad_sizes():
    with pytest.raises(ValueError, match="length"):
        P.audio_window(100, 50, 0)


# --------------------------------------------------------------------------------------
# prepare: failures, skipping, parallel runs


def test_failures_are_reported_with_reasons_and_never_stop_the_run(videos, tmp_path, capsys):
    folder, specs = videos
    ids_file = tmp_path / "ids.txt"
    ids = [*specs, *BAD_REASONS, "not_downloaded"]
    ids_file.write_text("\n".join(ids) + "\n")
    out = tmp_path / "out"
    assert P.main(["--videos", str(folder), "--out", str(out), "--ids", str(ids_file),
                   "--workers", "1", "--no-progress"]) == 0
    report = json.loads((out / P.REPORT_NAME).read_text())
    assert report["done"] == sorted(specs)
    assert report["skipped"] == 0 and report["total"] == len(ids)
    reasons = {item["id"]: item["reason"] for item in report["failed"]}
    assert set(reasons) == {*BAD_REASONS, "not_downloaded"}
    for clip_id, kind in BAD_REASONS.items():
        assert reasons[clip_id].startswith(kind), (clip_id, reasons[clip_id])
    assert reasons["not_downloaded"].startswith("missing video")
    assert "0.500 s of audio" in reasons["short_audio"]
    assert "misses the center frame at 5.000 s" in reasons["late_frame"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"prepare: {len(ids)} clips: 3 done, 0 skipped, 7 failed")
    for clip_id in reasons:  # a failed clip leaves nothing behind
        assert not P.frame_path(out, clip_id).exists() and not P.audio_path(out, clip_id).exists()
    assert not list(out.rglob("*.tmp"))


def test_second_run_skips_everything(videos, tmp_path):
    folder, specs = videos
    first = P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    assert first["done"] == sorted(specs)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in {".jpg", ".wav"}}
    assert len(stamps) == 2 * len(specs)
    second = P.prepare(folder, tmp_path, ids=list(specs), workers=2, progress=False)
    assert (second["done"], second["skipped"], second["failed"]) == ([], len(specs), [])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a clip with only one of its two outputs is prepared again
    lone = sorted(specs)[1]
    P.audio_path(tmp_path, lone).unlink()
    third = P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    assert (third["done"], third["skipped"], third["failed"]) == ([lone], len(specs) - 1, [])
    assert P.verify(tmp_path, list(specs)) == []


def test_all_videos_without_ids_and_parallel_equals_sequential(videos, tmp_path):
    folder, specs = videos
    sequential = P.prepare(folder, tmp_path / "seq", progress=False)
    parallel = P.prepare(folder, tmp_path / "par", workers=2, progress=False)
    assert sequential["done"] == parallel["done"] == sorted(specs)
    assert sequential["failed"] == parallel["failed"]
    assert {item["id"] for item in parallel["failed"]} == set(BAD_REASONS)  # notes.txt is no video
    for clip_id in specs:
        for path in (P.frame_path, P.audio_path):
            assert path(tmp_path / "seq", clip_id).read_bytes() == path(tmp_path / "par", clip_id).read_bytes()


def test_a_crashing_worker_costs_only_its_own_clip(videos, tmp_path, monkeypatch):
    folder, specs = videos
    crasher = "clip_c"
    monkeypatch.setenv(P._CRASH_ENV, crasher)
    report = P.prepare(folder, tmp_path, ids=list(specs), workers=2, progress=False)
    assert report["done"] == sorted(set(specs) - {crasher})
    assert [item["id"] for item in report["failed"]] == [crasher]
    assert report["failed"][0]["reason"].startswith("worker crashed")


def test_killed_run_resumes_without_damaged_outputs(tmp_path):
    folder = tmp_path / "videos"
    good_clips(folder)
    for k in range(3):  # six clips in all
        write_video(folder / f"extra_{k}.mkv", acodec="pcm_s16le", rate=22050)
    ids = sorted(p.stem for p in folder.iterdir())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "marginnce_kit.prepare", "--videos", str(folder), "--out", str(out),
               "--workers", "1", "--no-progress"]
    env = {**os.environ, P._PAUSE_ENV: "1.0", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # wait until one clip is complete and the next one's temp files are written
        while not (list(out.glob("frames/*.jpg")) and list(out.glob("*/*.tmp"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its second clip"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    finished = {p.stem for p in out.glob("frames/*.jpg")} & {p.stem for p in out.glob("audio/*.wav")}
    assert 1 <= len(finished) < len(ids)
    assert list(out.glob("*/*.tmp"))  # killed mid-write
    assert not (out / P.REPORT_NAME).exists()
    assert P.verify(out, sorted(finished)) == []  # what was renamed into place is complete

    env.pop(P._PAUSE_ENV)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / P.REPORT_NAME).read_text())
    assert report["skipped"] == len(finished)
    assert report["done"] == sorted(set(ids) - finished)
    assert report["failed"] == [] and report["stale_temp_files_removed"] >= 1
    assert not list(out.rglob("*.tmp"))
    assert P.verify(out, ids) == []
    for clip_id in ids:
        assert nearest_frame(P.frame_path(out, clip_id))[0] == (31 if "8puiAGLhs" in clip_id else 30) // 2
        assert sf.info(str(P.audio_path(out, clip_id))).frames in range(48000 - 10, 48300)
    assert f"{len(set(ids) - finished)} done, {len(finished)} skipped, 0 failed" in rerun.stdout


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


def test_report_records_windows_and_keeps_them_for_skipped_clips(videos, tmp_path):
    folder, specs = videos
    first = P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    assert sorted(first["clips"]) == sorted(specs)
    for entry in first["clips"].values():
        assert entry["window_rule"] == "whole-file"  # 3 s files: trimmed, even with VGGSound ids
        assert entry["window"][0] == 0.0 and entry["frame_time"] == pytest.approx(1.5)
        assert entry["audio"] == pytest.approx([0.0, 3.0], abs=0.03)
    second = P.prepare(folder, tmp_path, ids=list(specs), progress=False)
    assert second["skipped"] == len(specs) and second["clips"] == first["clips"]
    assert json.loads((tmp_path / P.REPORT_NAME).read_text())["clips"] == first["clips"]
