"""A tiny audio-visual dataset in the real on-disk layout (:mod:`marginnce_kit.layout`), written by the tests.

    <root>/frames/<id>.jpg   the clip's frame (JPEG)
    <root>/audio/<id>.wav    16 kHz mono PCM
    <root>/train.txt         training ids, one per line
    <root>/test.csv          test ids (first CSV column)
    <root>/vggss.json        VGG-SS-style boxes of the test clips: [{"file", "class", "bbox": [[x0, y0, x1, y1]]}]

Every clip belongs to one of ``N_CLASSES`` classes: its frame is a noisy background with one
rectangle of the class colour (the annotated box), its sound a tone at the class frequency plus
noise, so the audio says what to look for and the box says where it is. Deterministic in ``seed``.

Use :func:`make_av_dataset` (e.g. from a module- or session-scoped pytest fixture) and
:func:`train_config` for a CPU-sized trainer config over it.

Also the small real video files that ``marginnce_kit.prepare`` reads (tests/test_prepare*.py, written with PyAV):
:func:`write_video` writes a clip whose frames' colour encodes the frame index (``R = 8 i, G = 255 - 8 i, B = 128``,
:func:`colour`) and whose audio is a known signal at a rate that is not 16 kHz (:func:`tone`, :func:`chirp`), so the
saved center frame (:func:`nearest_frame`) and the resampled audio's rate, length, frequency (:func:`peak_frequency`)
and time alignment can all be checked against what was encoded; :func:`good_clips` writes the well-formed ones and
:data:`BAD_REASONS` names the reason each malformed clip of the ``videos`` fixture (tests/conftest.py) must fail with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marginnce_kit.data.audio import SAMPLE_RATE
from marginnce_kit.layout import audio_path, frame_path, make_dirs

N_CLASSES = 4
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 40))
TONES_HZ = (330.0, 660.0, 1320.0, 2640.0)


@dataclass(frozen=True)
class AVFixture:
    """Paths and ids of a dataset written by :func:`make_av_dataset`."""

    root: Path
    train_ids: list[str]
    test_ids: list[str]
    boxes: dict = field(default_factory=dict)  # test id -> [[x0, y0, x1, y1]] (normalised)

    @property
    def train_list(self) -> Path:
        return self.root / "train.txt"

    @property
    def test_list(self) -> Path:
        return self.root / "test.csv"

    @property
    def annotations(self) -> Path:
        return self.root / "vggss.json"

    def frame(self, clip_id: str) -> Path:
        return frame_path(self.root, clip_id)

    def audio(self, clip_id: str) -> Path:
        return audio_path(self.root, clip_id)


def _clip(rng: np.random.Generator, label: int, height: int, width: int, seconds: float):
    x0, y0 = rng.uniform(0.0, 0.55, size=2)
    x1, y1 = x0 + rng.uniform(0.25, 0.45), y0 + rng.uniform(0.25, 0.45)
    frame = rng.integers(60, 160, size=(height, width, 3), dtype=np.uint8)
    r0, r1 = int(y0 * height), int(y1 * height)
    c0, c1 = int(x0 * width), int(x1 * width)
    frame[r0:r1, c0:c1] = COLOURS[label]
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.4 * np.sin(2 * np.pi * TONES_HZ[label] * t + rng.uniform(0, 2 * np.pi)) + 0.05 * rng.standard_normal(t.size)
    return frame, wave, [round(float(v), 4) for v in (x0, y0, x1, y1)]


def make_av_dataset(root: Path, n_train: int = 16, n_test: int = 8, seed: int = 0, height: int = 72,
                    width: int = 96, seconds: float = 1.0) -> AVFixture:
    """Write ``n_train`` training and ``n_test`` annotated test clips under ``root`` (see module doc).

    Frames are ``height x width`` (the loader resizes them: 246 short side for training, 224 x 224 for
    testing); the audio is ``seconds`` long (the loader tiles it to 3 s)."""
    import soundfile as sf
    from PIL import Image

    root = Path(root)
    make_dirs(root)
    rng = np.random.default_rng(seed)
    train_ids = [f"tr{i:03d}_{10 * i:06d}" for i in range(n_train)]
    test_ids = [f"te{i:03d}_{10 * i:06d}" for i in range(n_test)]
    boxes = {}
    entries: list[dict[str, Any]] = []
    for k, clip_id in enumerate(train_ids + test_ids):
        label = k % N_CLASSES
        frame, wave, box = _clip(rng, label, height, width, seconds)
        Image.fromarray(frame).save(frame_path(root, clip_id), quality=90)
        sf.write(str(audio_path(root, clip_id)), wave, SAMPLE_RATE, subtype="PCM_16")
        if clip_id in test_ids:
            boxes[clip_id] = [box]
            entries.append({"file": clip_id, "class": f"class{label}", "bbox": [box]})
    (root / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (root / "test.csv").write_text("".join(f"{i},class{k % N_CLASSES}\n" for k, i in enumerate(test_ids)))
    (root / "vggss.json").write_text(json.dumps(entries))
    return AVFixture(root, train_ids, test_ids, boxes)


def break_frame(fx: AVFixture, clip_id: str) -> None:
    """Overwrite a clip's frame with bytes no image decoder accepts (a decode failure at load time)."""
    fx.frame(clip_id).write_bytes(b"this is not a jpeg")


def break_audio(fx: AVFixture, clip_id: str) -> None:
    """Overwrite a clip's wav with a truncated RIFF header (a decode failure at load time)."""
    fx.audio(clip_id).write_bytes(b"RIFF\x00\x01garbage")


def train_config(fx: AVFixture, **overrides: Any):
    """A CPU-sized ``TrainConfig`` over ``fx``: small backbone (width 8), dim 32, batch 4, 2 epochs,
    with the test split for evaluation. ``overrides`` replace any field."""
    from marginnce_kit.train import TrainConfig

    values: dict[str, Any] = dict(
        model="reference", margin=-0.2, backbone="small", width=8, dim=32, epochs=2, batch_size=4, lr=1e-3,
        train_root=str(fx.root), train_list=str(fx.train_list), test_root=str(fx.root), test_list=str(fx.test_list),
        annotations=str(fx.annotations), device="cpu", workers=0, cache=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def train_argv(fx: AVFixture, out: Path, *extra: str) -> list[str]:
    """The ``python -m marginnce_kit.train`` arguments of :func:`train_config` (derived from the config by
    :func:`marginnce_kit.training.options.config_argv`), without progress bars, plus ``extra``."""
    from marginnce_kit.training.options import config_argv

    return [*config_argv(train_config(fx)), "--no-progress", "--out", str(out), *extra]


# --------------------------------------------------------------------------- small real videos, for prepare
#: frame rate and (H, W) of the videos :func:`write_video` writes
FPS = 10
SIZE = (48, 64)


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
    picture: np.ndarray | None = None,
    bit_rate: int = 2_000_000,
    configure=None,
) -> Path:
    """Write a clip: ``n_frames`` at 10 fps (None: no video stream) and ``audio_seconds`` of
    ``signal_fn`` at ``rate`` Hz (None: no audio stream).  AAC is written stereo (both
    channels equal), PCM mono. The frames are solid :func:`colour` pictures of :data:`SIZE`, or
    ``picture`` (``[H, W, 3]`` uint8) in every frame; ``configure(video_stream)`` runs before the
    first frame (e.g. a display matrix: ``tests/rotated_videos.py``)."""
    import av

    with av.open(str(path), "w") as container:
        video = None
        if n_frames is not None:
            video = container.add_stream(vcodec, rate=FPS)
            video.height, video.width = SIZE if picture is None else picture.shape[:2]
            video.pix_fmt = "yuv420p"
            video.bit_rate = bit_rate  # the default: solid colours survive to within a few levels
            if configure is not None:
                configure(video)
        audio = None
        if audio_seconds is not None:
            audio = container.add_stream(acodec, rate=rate)
            audio.layout = "stereo" if acodec == "aac" else "mono"
        if video is not None:
            for i in range(n_frames):
                if picture is None:
                    image = np.empty(SIZE + (3,), np.uint8)
                    image[...] = colour(i).astype(np.uint8)
                else:
                    image = picture
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
    from PIL import Image

    mean = np.asarray(Image.open(jpg).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    errors = [np.abs(mean - colour(i)).max() for i in range(32)]
    best = int(np.argmin(errors))
    return best, float(errors[best])


def peak_frequency(x: np.ndarray, rate: int) -> float:
    """Frequency of the largest Hann-windowed FFT bin."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[spectrum.argmax()])

