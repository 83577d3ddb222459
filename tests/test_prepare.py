"""``marginnce_kit.prepare`` on small real video files written with PyAV (tests/fixtures.py, the ``videos``
fixture of tests/conftest.py): what a prepared clip holds (the center frame, 16 kHz mono audio, the audio window
centered on that frame and slid inwards at the stream's ends), the report's windows, and the runs: failures
reported with their reasons, a second run skipping, parallel = sequential, a crashing worker, a killed run resumed.
Verify, the id files and the command line's arguments are in test_prepare_cli.py."""

from __future__ import annotations

import json
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

from .fixtures import BAD_REASONS, chirp, good_clips, nearest_frame, peak_frequency, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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
