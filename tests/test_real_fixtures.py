"""Real-shaped inputs, written at test time with PyAV / Pillow / soundfile, each with its expected outcome.

The inputs are the kinds real VGGSound / Flickr-SoundNet downloads hold: untrimmed and trimmed videos,
8 / 44.1 / 48 kHz, mono / stereo / 5.1, AAC / MP3 / Opus / PCM audio, a video without audio, an
audio-only file, a variable frame rate, a 0.5 s clip, non-finite float samples, truncated frames and
unusual JPEG colour modes.  ``VIDEO_CASES`` and ``ROOT_CASES`` are the tables: an outcome is
``"prepared"`` (or ``"ok"`` for a file in a prepared root) or the reason the clip fails with.

Every frame's colour encodes its index (``colour``) and every audio track is a sweep whose phase
encodes time (``sweep``), so the chosen frame and the kept audio span are checked against what was
encoded, not only counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")
torch = pytest.importorskip("torch")

from marginnce_kit import prepare as P  # noqa: E402
from marginnce_kit.data.datasets import AudioVisualDataset, FailedSample  # noqa: E402

SIZE = 32  # frame side in pixels (even: H.264 needs it)


def _encodable(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def needs(*codecs: str):
    """Skip (with the reason) a case whose codec this PyAV build cannot encode."""
    missing = [c for c in codecs if not _encodable(c)]
    return pytest.mark.skipif(bool(missing), reason=f"this PyAV build cannot encode {', '.join(missing)}")


def colour(i: int) -> np.ndarray:
    """RGB colour of frame ``i`` (i < 320): two channels in steps of 16 and 12 levels."""
    return np.array([(i % 16) * 16, (i // 16) * 12, 128], dtype=np.float64)


def frame_index_of(image: np.ndarray) -> int:
    """The frame index whose colour is nearest to the image's mean colour (asserts it is close)."""
    mean = image.reshape(-1, 3).astype(np.float64).mean(0)
    errors = [np.abs(mean - colour(i)).max() for i in range(320)]
    best = int(np.argmin(errors))
    assert errors[best] < 5.0, (mean, colour(best))
    return best


def sweep(t: np.ndarray) -> np.ndarray:
    """0.4-amplitude linear sweep, 200 Hz + 20 Hz/s: where it is in time shows in every window."""
    return 0.4 * np.sin(2 * np.pi * (200.0 * t + 10.0 * t**2))


@dataclass(frozen=True)
class Audio:
    codec: str = "aac"
    rate: int = 44100
    layout: str = "stereo"
    seconds: float | None = None  # None: as long as the video
    inject: dict[float, float] = field(default_factory=dict)  # time (s) -> value written at that sample


def write_video(
    path: Path,
    seconds: float | None = 3.0,
    fps: int = 5,
    vcodec: str = "libx264",
    audio: Audio | None = Audio(),
    frame_times: list[float] | None = None,
) -> Path:
    """A video of ``seconds`` at ``fps`` (or frames at ``frame_times``, ms time base; None: no video)
    and ``audio`` (None: no audio stream); frame ``i`` has ``colour(i)``, the audio is ``sweep``."""
    with av.open(str(path), "w") as container:
        video = None
        if seconds is not None or frame_times is not None:
            video = container.add_stream(vcodec, rate=fps)
            video.width = video.height = SIZE
            video.pix_fmt = "yuv420p"
            video.bit_rate = 2_000_000
            if frame_times is not None:
                video.codec_context.time_base = Fraction(1, 1000)
                video.time_base = Fraction(1, 1000)
        astream = None
        if audio is not None:
            astream = container.add_stream(audio.codec, rate=audio.rate)
            astream.layout = audio.layout
        if video is not None:
            times = frame_times if frame_times is not None else [i / fps for i in range(round(seconds * fps))]
            for i, t in enumerate(times):
                image = np.empty((SIZE, SIZE, 3), np.uint8)
                image[...] = colour(i).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                if frame_times is not None:
                    frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                else:
                    frame.pts = i
                for packet in video.encode(frame):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        if astream is not None:
            length = audio.seconds if audio.seconds is not None else seconds
            n = int(round(length * audio.rate))
            channels = len(av.AudioLayout(audio.layout).channels)
            mono = sweep(np.arange(n) / audio.rate).astype(np.float32)
            for t, value in audio.inject.items():
                mono[int(round(t * audio.rate))] = value
            for pos in range(0, n, 1024):
                chunk = np.repeat(mono[None, pos:pos + 1024], channels, axis=0)
                if audio.codec == "pcm_s16le":
                    data = np.round(chunk.T.reshape(1, -1) * 32767).astype(np.int16)
                    frame = av.AudioFrame.from_ndarray(data, format="s16", layout=audio.layout)
                elif audio.codec == "pcm_f32le":
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.T.reshape(1, -1)), format="flt",
                                                       layout=audio.layout)
                else:
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=audio.layout)
                frame.sample_rate, frame.pts = audio.rate, pos
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


@dataclass(frozen=True)
class VideoCase:
    """One video file, how to write it, and what ``prepare`` must make of it.

    ``outcome`` is ``"prepared"`` or the start of the failure reason.  For prepared clips
    ``window`` / ``frame_time`` are the expected report values (seconds), ``frame`` the index of
    the expected center frame in the file.
    """

    clip_id: str
    suffix: str
    write: Callable[[Path], Path]
    outcome: str
    codecs: tuple[str, ...] = ()
    window: tuple[float, float] | None = None
    frame_time: float | None = None
    frame: int | None = None
    audio_tol: float = 0.05  # max |kept audio - sweep| (lossy codecs need more)


VFR_TIMES = [0.05 * i for i in range(20)] + [1.0 + 0.4 * j for j in range(10)]  # 20 fast, 10 slow frames

VIDEO_CASES = [
    # untrimmed VGGSound download: 30 s video, the id names 2-12 s (the case)
    VideoCase("untrimmedAA_000002", ".mp4", lambda p: write_video(p, 30.0), "prepared", ("libx264", "aac"),
              window=(2.0, 12.0), frame_time=7.0, frame=35),
    # the same clip trimmed: the file is the clip
    VideoCase("trimmedAAAA_000002", ".mp4", lambda p: write_video(p, 10.0), "prepared", ("libx264", "aac"),
              window=(0.0, 10.0), frame_time=5.0, frame=25),
    # trimmed but a little long (re-encoding padding): still the whole file (10.6 s <= 10 + 1)
    VideoCase("trimmedlong_000040", ".mkv", lambda p: write_video(p, 10.6, audio=Audio("pcm_s16le", 22050, "mono")),
              "prepared", ("libx264",), window=(0.0, 10.6), frame_time=5.2, frame=26, audio_tol=2e-3),
    VideoCase("pastendAAAA_000040", ".mp4", lambda p: write_video(p, 30.0), "window starts past the end",
              ("libx264", "aac")),
    VideoCase("nofitAAAAAA_000025", ".mp4", lambda p: write_video(p, 30.0), "window does not fit",
              ("libx264", "aac")),
    # audio formats: 8 kHz mono PCM, 44.1 kHz stereo AAC (above), 48 kHz 5.1 AAC, MP3 in AVI, Opus in WebM
    VideoCase("pcm8k_mono", ".mkv", lambda p: write_video(p, 3.0, audio=Audio("pcm_s16le", 8000, "mono")),
              "prepared", ("libx264",), window=(0.0, 3.0), frame_time=1.4, frame=7, audio_tol=2e-3),
    # 5.1 -> mono: FFmpeg's down-mix matrix scales the sum (0.52 here for 0.4 in each channel), and
    # AAC at its default bit rate for six channels is coarse: the frequency at the center is checked
    VideoCase("aac48k_5.1", ".mp4", lambda p: write_video(p, 3.0, audio=Audio("aac", 48000, "5.1")),
              "prepared", ("libx264", "aac"), window=(0.0, 3.0), frame_time=1.4, frame=7, audio_tol=None),
    VideoCase("mp3_44k_stereo", ".avi",
              lambda p: write_video(p, 3.0, vcodec="mpeg4", audio=Audio("libmp3lame", 44100, "stereo")),
              "prepared", ("mpeg4", "libmp3lame"), frame=7, audio_tol=None),
    VideoCase("opus48k_webm", ".webm",
              lambda p: write_video(p, 3.0, vcodec="libvpx", audio=Audio("libopus", 48000, "stereo")),
              "prepared", ("libvpx", "libopus"), frame=7, audio_tol=None),
    VideoCase("pcm48k_stereo", ".mov", lambda p: write_video(p, 3.0, audio=Audio("pcm_s16le", 48000, "stereo")),
              "prepared", ("libx264",), window=(0.0, 3.0), frame_time=1.4, frame=7, audio_tol=2e-3),
    # variable frame rate: the center frame is the middle one by count (index 15 at 0.75 s), not the
    # frame at the middle of the duration (4.6 s / 2)
    VideoCase("vfr", ".mkv", lambda p: write_video(p, None, frame_times=VFR_TIMES,
                                                   audio=Audio("pcm_s16le", 16000, "mono", seconds=5.0)),
              "prepared", ("libx264",), frame_time=0.75, frame=15, audio_tol=2e-3),
    VideoCase("no_audio", ".mp4", lambda p: write_video(p, 3.0, audio=None), "no audio stream", ("libx264",)),
    VideoCase("audio_only", ".mp4", lambda p: write_video(p, None, audio=Audio(seconds=3.0)), "no video stream", ("aac",)),
    VideoCase("half_second", ".mkv", lambda p: write_video(p, 0.5, audio=Audio("pcm_s16le", 22050, "mono")),
              "too short: 0.500 s of audio, the minimum is 1 s", ("libx264",)),
    VideoCase("float_nan", ".mkv",
              lambda p: write_video(p, 3.0, audio=Audio("pcm_f32le", 16000, "mono", inject={1.5: np.nan})),
              "non-finite audio: 1 NaN, 0 +Inf, 0 -Inf values, the first at 1.500 s", ("libx264", "pcm_f32le")),
    VideoCase("float_inf", ".mkv",
              lambda p: write_video(p, 3.0, audio=Audio("pcm_f32le", 44100, "stereo",
                                                        inject={0.25: np.inf, 2.0: -np.inf})),
              "non-finite audio: 0 NaN, 2 +Inf, 2 -Inf values, the first at 0.250 s", ("libx264", "pcm_f32le")),
    # NaN outside the clip's window of an untrimmed video still breaks the clip ("anywhere")
    VideoCase("nanoutsideA_000002", ".mkv",
              lambda p: write_video(p, 20.0, audio=Audio("pcm_f32le", 16000, "mono", inject={18.0: np.nan})),
              "non-finite audio: 1 NaN", ("libx264", "pcm_f32le")),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Write every encodable ``VIDEO_CASES`` video, prepare them all in one run."""
    folder = tmp_path_factory.mktemp("videos")
    cases = {}
    for case in VIDEO_CASES:
        if all(_encodable(c) for c in case.codecs):
            case.write(folder / f"{case.clip_id}{case.suffix}")
            cases[case.clip_id] = case
    out = tmp_path_factory.mktemp("root")
    report = P.prepare(folder, out, workers=1, progress=False)
    return folder, out, report, cases


@pytest.mark.parametrize("case", VIDEO_CASES, ids=[c.clip_id for c in VIDEO_CASES])
def test_video_case_outcome(prepared, case):
    folder, out, report, cases = prepared
    if case.clip_id not in cases:
        pytest.skip(f"this PyAV build cannot encode one of {case.codecs}")
    reasons = {item["id"]: item["reason"] for item in report["failed"]}
    if case.outcome != "prepared":
        assert case.clip_id in reasons, f"{case.clip_id} was prepared, expected: {case.outcome}"
        assert reasons[case.clip_id].startswith(case.outcome), reasons[case.clip_id]
        assert not P.frame_path(out, case.clip_id).exists() and not P.audio_path(out, case.clip_id).exists()
        assert case.clip_id not in report["clips"]
        return
    assert case.clip_id in report["done"], reasons.get(case.clip_id)
    entry = report["clips"][case.clip_id]
    if case.window is not None:
        assert entry["window"] == pytest.approx(list(case.window), abs=0.05)
    assert entry["window_rule"] == ("from-id" if case.window and case.window[0] > 0 else "whole-file")
    if case.frame_time is not None:
        assert entry["frame_time"] == pytest.approx(case.frame_time, abs=1e-3)
    # the saved frame is the expected one
    with Image.open(P.frame_path(out, case.clip_id)) as image:
        assert frame_index_of(np.asarray(image.convert("RGB"))) == case.frame
    # the saved audio is 16 kHz mono and is the sweep over the recorded span
    audio, rate = sf.read(P.audio_path(out, case.clip_id), dtype="float64")
    assert rate == 16000 and audio.ndim == 1
    start, stop = entry["audio"]
    assert len(audio) == pytest.approx((stop - start) * 16000, abs=1)
    assert start <= entry["frame_time"] <= stop
    if case.audio_tol is not None:
        expected = sweep(start + np.arange(len(audio)) / 16000)
        error = np.abs(audio - expected)[64:-64]  # the resampler's filter onset at the two ends
        assert error.max() < case.audio_tol
        shifted = sweep(start + 0.01 + np.arange(len(audio)) / 16000)
        assert np.abs(audio - shifted)[64:-64].max() > 2 * case.audio_tol  # pins the position
    else:  # MP3 / Opus move the signal by their encoder delay, 5.1 is scaled: the frequency at the center
        center = len(audio) // 2
        piece = audio[center - 4000:center + 4000]
        spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
        peak = np.fft.rfftfreq(len(piece), 1 / 16000)[spectrum.argmax()]
        t_mid = start + center / 16000
        assert abs(peak - (200 + 20 * t_mid)) < 6.0


def test_untrimmed_window_is_the_id_clip_and_not_the_file_center(prepared):
    """The issue's case: a 30 s download named ..._000002 gives the frame at 7 s and audio 2-12 s."""
    _, out, report, cases = prepared
    if "untrimmedAA_000002" not in cases:
        pytest.skip("needs libx264 and aac")
    entry = report["clips"]["untrimmedAA_000002"]
    assert entry == {"window": [2.0, 12.0], "window_rule": "from-id", "frame_time": 7.0,
                     "audio": pytest.approx([2.0, 12.0], abs=0.03), "video_seconds": pytest.approx(30.0, abs=0.05),
                     "rotation": 0}


def test_prepared_clips_pass_verify_and_load(prepared):
    """What prepare wrote passes the same rule in --verify and in the dataset."""
    _, out, report, _ = prepared
    done = report["done"]
    assert done and P.verify(out, done) == []
    dataset = AudioVisualDataset(out, done, split="test", max_failures=0)
    for i in range(len(dataset)):
        item = dataset[i]
        assert not isinstance(item, FailedSample), item
        assert torch.isfinite(item["spectrogram"]).all() and torch.isfinite(item["image"]).all()


def test_window_modes_and_other_id_schemes(tmp_path):
    """--window whole-file / from-id and --start-regex for ids that are not VGGSound's."""
    videos = tmp_path / "videos"
    videos.mkdir()
    pcm = Audio("pcm_s16le", 16000, "mono")
    write_video(videos / "untrimmedAA_000002.mkv", 30.0, audio=pcm)
    write_video(videos / "clipA_s12.mkv", 30.0, audio=pcm)
    whole = P.prepare(videos, tmp_path / "whole", window=P.WindowRule("whole-file"), progress=False)
    assert whole["clips"]["untrimmedAA_000002"]["window"] == pytest.approx([0.0, 30.0], abs=0.05)
    assert whole["clips"]["untrimmedAA_000002"]["frame_time"] == pytest.approx(15.0)
    strict = P.prepare(videos, tmp_path / "strict", window=P.WindowRule("from-id"), progress=False)
    assert strict["done"] == ["untrimmedAA_000002"]
    assert strict["failed"][0]["id"] == "clipA_s12"
    assert strict["failed"][0]["reason"].startswith("window: --window from-id but the id 'clipA_s12' does not match")
    own = P.WindowRule("auto", r"clip\w_s(?P<start>\d+)", clip_seconds=5.0)
    other = P.prepare(videos, tmp_path / "other", window=own, progress=False)
    assert other["clips"]["clipA_s12"]["window"] == [12.0, 17.0]
    assert other["clips"]["clipA_s12"]["frame_time"] == pytest.approx(14.4)  # 25 frames 12.0 .. 16.8, k = 12
    assert other["clips"]["untrimmedAA_000002"]["window_rule"] == "whole-file"  # no match: whole file
    with_end = P.WindowRule("from-id", r"clip\w_s(?P<start>\d+)(_(?P<end>\d+))?")
    write_video(videos / "clipB_s20_26.mkv", 30.0, audio=pcm)
    assert P.decode_clip(videos / "clipB_s20_26.mkv", window=with_end).window == (20.0, 26.0)
    # from the command line, and the report's settings
    assert P.main(["--videos", str(videos), "--out", str(tmp_path / "cli"), "--workers", "1", "--no-progress",
                   "--window", "from-id", "--start-regex", r"clip\w_s(?P<start>\d+)(_(?P<end>\d+))?",
                   "--clip-seconds", "4"]) == 0
    report = json.loads((tmp_path / "cli" / P.REPORT_NAME).read_text())
    assert report["window"] == {"mode": "from-id", "start_regex": r"clip\w_s(?P<start>\d+)(_(?P<end>\d+))?",
                                "clip_seconds": 4.0, "tolerance": 1.0}
    assert report["clips"]["clipA_s12"]["window"] == [12.0, 16.0]
    assert report["clips"]["clipB_s20_26"]["window"] == [20.0, 26.0]
    assert [f["id"] for f in report["failed"]] == ["untrimmedAA_000002"]


def test_window_rule_tolerance_edges():
    rule = P.WindowRule()
    ytid = "abcdefghijk"
    # clearly longer than one clip: D > 10 + 1
    assert P.clip_window(f"{ytid}_000003", 0.0, 11.0, rule) == (0.0, 11.0, "whole-file")
    assert P.clip_window(f"{ytid}_000001", 0.0, 11.01, rule) == (1.0, 11.0, "from-id")
    # a window may overrun the end by the tolerance, and is then cut to the end
    assert P.clip_window(f"{ytid}_000021", 0.5, 30.5, rule) == (21.5, 30.5, "from-id")
    with pytest.raises(P.ClipError, match=r"window does not fit: the id names 21.000-31.000 s, the video is 29.900 s"):
        P.clip_window(f"{ytid}_000021", 0.0, 29.9, rule)
    with pytest.raises(P.ClipError, match="window starts past the end"):
        P.clip_window(f"{ytid}_000030", 0.0, 30.0, rule)
    # not the VGGSound form: whole file
    for other in ("abcdefghij_000003", "abcdefghijkl_000003", f"{ytid}_00003", f"{ytid}_000003x"):
        assert P.clip_window(other, 0.0, 60.0, rule)[2] == "whole-file"
    for bad in (dict(mode="trim"), dict(id_pattern="(no group)"), dict(id_pattern="(?P<start>"),
                dict(clip_seconds=0.0), dict(tolerance=-1.0), dict(tolerance=float("nan"))):
        with pytest.raises(ValueError):
            P.WindowRule(**bad)


# --------------------------------------------------------------------------------------
# files in a prepared root (e.g. the Flickr-SoundNet test frames, or wavs made elsewhere):
# --verify and the dataset apply the one rule and give the same reason


def _rgb(colour_rgb=(200, 30, 40)):
    return Image.new("RGB", (48, 40), colour_rgb)


def _save_png_as_jpg(image, path):
    image.save(path, format="PNG")  # a PNG named .jpg, as some scraped frame sets hold


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG", quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wav(data, rate=16000, subtype="PCM_16"):
    return lambda path: sf.write(str(path), data, rate, subtype=subtype)


_GOOD_WAV = _wav(sweep(np.arange(32000) / 16000))
_NAN = sweep(np.arange(32000) / 16000).astype(np.float32)
_NAN[8000] = np.nan
_INF = sweep(np.arange(32000) / 16000)
_INF[100], _INF[200], _INF[300] = np.inf, -np.inf, np.inf


@dataclass(frozen=True)
class RootCase:
    clip_id: str
    frame: Callable[[Path], None]
    audio: Callable[[Path], None]
    outcome: str  # "ok" or the full reason
    rgb: tuple[int, int, int] | None = None  # expected mean colour of the loaded frame


ROOT_CASES = [
    RootCase("jpeg_rgb", lambda p: _rgb().save(p, quality=95), _GOOD_WAV, "ok", (200, 30, 40)),
    RootCase("jpeg_cmyk", lambda p: _rgb().convert("CMYK").save(p, format="JPEG", quality=95), _GOOD_WAV, "ok",
             (200, 30, 40)),
    RootCase("jpeg_l", lambda p: _rgb().convert("L").save(p, format="JPEG", quality=95), _GOOD_WAV, "ok",
             (83, 83, 83)),
    RootCase("png_p", lambda p: _save_png_as_jpg(_rgb().convert("P"), p), _GOOD_WAV, "ok", (200, 30, 40)),
    RootCase("png_la", lambda p: _save_png_as_jpg(_rgb().convert("LA"), p), _GOOD_WAV, "ok", (83, 83, 83)),
    RootCase("png_16bit", lambda p: _save_png_as_jpg(Image.fromarray(np.full((40, 48), 40000, np.uint16)), p),
             _GOOD_WAV, "frame: unsupported colour mode 'I;16' (expected one of"),
    RootCase("jpeg_truncated", _truncated_jpeg, _GOOD_WAV, "frame does not decode: OSError: image file is truncated"),
    RootCase("wav_nan", lambda p: _rgb().save(p), _wav(_NAN, subtype="FLOAT"),
             "non-finite audio: 1 NaN, 0 +Inf, 0 -Inf values, the first at 0.500 s"),
    RootCase("wav_inf", lambda p: _rgb().save(p), _wav(_INF, subtype="DOUBLE"),
             "non-finite audio: 0 NaN, 2 +Inf, 1 -Inf values, the first at 0.006 s"),
    RootCase("wav_one_sample", lambda p: _rgb().save(p), _wav(np.zeros(1, np.int16)),
             "too short: 0.000 s of audio, the minimum is 1 s"),
    RootCase("wav_44k", lambda p: _rgb().save(p), _wav(np.zeros(44100, np.int16), 44100),
             "audio: expected 16000 Hz, got 44100 Hz"),
    RootCase("wav_stereo", lambda p: _rgb().save(p), _wav(np.zeros((16000, 2), np.int16)),
             "audio: expected 1 channel, got 2"),
    RootCase("wav_garbage", lambda p: _rgb().save(p), lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk"),
             "audio does not decode: "),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("prepared")
    (path / "frames").mkdir()
    (path / "audio").mkdir()
    for case in ROOT_CASES:
        case.frame(P.frame_path(path, case.clip_id))
        case.audio(P.audio_path(path, case.clip_id))
    return path


@pytest.mark.parametrize("case", ROOT_CASES, ids=[c.clip_id for c in ROOT_CASES])
def test_root_case_outcome_same_in_verify_and_dataset(root, case):
    problems = P.verify_clip(root, case.clip_id)
    dataset = AudioVisualDataset(root, [case.clip_id], split="test", max_failures=1)
    item = dataset[0]
    if case.outcome == "ok":
        assert problems == []
        assert not isinstance(item, FailedSample), item
        image = item["image"]  # normalised; undo to compare the colour
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        rgb = ((image * std + mean) * 255).mean(dim=(1, 2))
        assert torch.allclose(rgb, torch.tensor(case.rgb, dtype=torch.float32), atol=3.0), rgb
        return
    assert len(problems) == 1 and problems[0].startswith(case.outcome), problems
    assert isinstance(item, FailedSample) and item.reason == problems[0]
    assert dataset.failures.failed == {case.clip_id: problems[0]}


def test_verify_cli_reports_and_writes_the_clean_list(root, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{c.clip_id}\n" for c in ROOT_CASES))
    clean = tmp_path / "clean.txt"
    assert P.main(["--verify", str(root), "--ids", str(ids), "--workers", "1", "--write-clean", str(clean)]) == 1
    out = capsys.readouterr().out.splitlines()
    bad = [c.clip_id for c in ROOT_CASES if c.outcome != "ok"]
    good = [c.clip_id for c in ROOT_CASES if c.outcome == "ok"]
    assert [line.split("\t")[0] for line in out[:-2]] == bad
    for line, case in zip(out, [c for c in ROOT_CASES if c.outcome != "ok"]):
        assert line.split("\t")[1].startswith(case.outcome)
    assert out[-2] == f"verify: {len(ROOT_CASES)} ids, {len(good)} ok, {len(bad)} with problems"
    assert out[-1] == f"verify: wrote the {len(good)} ids that pass to {clean}"
    assert P.read_ids(clean) == good
    assert P.main(["--verify", str(root), "--ids", str(clean), "--workers", "1"]) == 0


@pytest.mark.skipif(not (_encodable("libx264") and _encodable("pcm_f32le")), reason="needs libx264 and pcm_f32le")
def test_prepare_and_verify_give_the_same_reason_for_the_same_defect(tmp_path):
    """The issue's case: --verify said ok to a 1-sample wav that prepare rejects; and NaN audio."""
    videos, root = tmp_path / "videos", tmp_path / "root"
    videos.mkdir()
    (root / "frames").mkdir(parents=True)
    (root / "audio").mkdir()
    write_video(videos / "one_sample.mkv", 1.0, audio=Audio("pcm_s16le", 16000, "mono", seconds=1 / 16000))
    write_video(videos / "nan.mkv", 2.0, audio=Audio("pcm_f32le", 16000, "mono", inject={0.5: np.nan}))
    report = P.prepare(videos, tmp_path / "out", workers=1, progress=False)
    by_prepare = {item["id"]: item["reason"] for item in report["failed"]}
    nan = sweep(np.arange(32000) / 16000).astype(np.float32)
    nan[8000] = np.nan
    for clip_id, audio in (("one_sample", np.zeros(1, np.int16)), ("nan", nan)):
        _rgb().save(P.frame_path(root, clip_id))
        sf.write(str(P.audio_path(root, clip_id)), audio, 16000, subtype="FLOAT" if audio.dtype.kind == "f" else "PCM_16")
    assert by_prepare == {
        "one_sample": "too short: 0.000 s of audio, the minimum is 1 s",
        "nan": "non-finite audio: 1 NaN, 0 +Inf, 0 -Inf values, the first at 0.500 s",
    }
    for clip_id, reason in by_prepare.items():
        assert P.verify_clip(root, clip_id) == [reason]
        item = AudioVisualDataset(root, [clip_id], split="test", max_failures=1)[0]
        assert isinstance(item, FailedSample) and item.reason == reason
