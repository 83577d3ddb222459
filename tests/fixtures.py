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
