"""The embedded data set's config: :class:`EmbeddedConfig` (``SyntheticConfig`` is its earlier name), its
presets and its content hash (the cache key)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._checks import check_float_in, check_int_in
from ..box_stats import DEFAULT_STATS_PATH

GENERATOR_VERSION: str = "1.2.0"
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "diamond", "triangle", "ring", "cross", "octagon", "hourglass")
TEXTURES: tuple[str, ...] = ("solid", "horizontal stripes", "vertical stripes", "diagonal stripes", "checker", "dots")
SPLITS: tuple[str, ...] = ("train", "test", "val")
_SPLIT_CODE = {"train": 0, "test": 1, "val": 2}
_STREAM_PLAN, _STREAM_IMAGE, _STREAM_AUDIO, _STREAM_INSTANCE, _STREAM_NOISY = 0, 1, 2, 3, 4
#: where a faulty positive's audio comes from (``EmbeddedConfig.faulty_source``)
FAULTY_SOURCES: tuple[str, ...] = ("group", "offscreen")
_MIN_BOX_PX = 8
_DISTRACTOR_CANDIDATES = 8


@dataclass(frozen=True)
class EmbeddedConfig:
    """Every knob of the embedded dataset (all of them enter the cache key).

    The knobs after ``box_stats`` shape the regime of the paper's argument (faulty negatives and faulty
    positives, Sec. 1 and 2.2); at their defaults the data set is the one of generator 1.1 byte for byte
    (frames, wavs, lists and ``vggss.json``), plus a validation split.

    Attributes:
        seed: master seed; clip ``(split, index)`` uses ``numpy.random.default_rng([seed, stream, split, index])``.
        num_classes: K, number of sound classes (>= 2). Few classes relative to the batch
            size make same-class negatives (faulty negatives) common.
        num_train: number of training clips.
        num_test: number of (clean, annotated) test clips.
        faulty_positive_rate: fraction of training clips whose audio is that of another
            training clip of a different class, in [0, 1).
        snr_db: ratio of class sound power to background-noise power, in dB.
        min_distractors, max_distractors: number of silent objects of other classes per
            frame, uniform in [min, max] (capped by the classes available in the group).
        centre_bias: position law of boxes, in (-1, 1): 0 uniform over the valid range,
            > 0 towards the frame center, < 0 towards the edges (see module doc).
        clutter: background clutter strength, >= 0 (mean number of clutter shapes is
            ``3 * clutter``; 0 leaves only the smooth background and pixel noise).
        heard_fraction: fraction of classes that are "heard" (open-set split), in (0, 1);
            at least one class lands on each side.
        image_size: frame side in pixels (224: the protocol's test resolution).
        sample_rate: audio rate in Hz (16000: the protocol's rate).
        seconds: audio length in seconds (3.0: the protocol's clip).
        jpeg_quality: Pillow JPEG quality of the frames.
        box_stats: path of the box statistics JSON (``None``: the committed VGG-SS
            statistics ``marginnce_kit/data/vggss_box_stats.json``); its content hash enters
            the cache key.
        num_val: number of (clean, annotated) validation clips, its own split (``val.csv``,
            ``val.json``): the checkpoint selection ``best_val`` scores it, never the test split.
        instance_coupling: strength in [0, 1] of the clip-level audio-visual correspondence. At 0 a
            clip's sound depends on its class only (same-class clips cannot be told apart by ear). Above
            0 a per-clip latent ``z ~ U(-1, 1)`` sets the sounding object's texture period
            (``12 + 4 z`` px) and brightness (``0.875 + 0.125 z``) and its sound's pitch
            (``f0 * 2 ** (3 c z / 12)``: up to +-3 semitones at ``c = 1``), and the box size sets the
            loudness (peak level ``(1 - c) g + c (0.3 + 0.5 r)`` with ``r`` the box's side
            ``sqrt(w h)`` as a fraction of the frame), so a same-class negative is separable in principle.
        faulty_source: ``"group"``: a faulty positive's audio is that of a training clip of another
            class of the clip's heard / unheard group (which may be a distractor on screen);
            ``"offscreen"``: of a class of the group that the frame does not show.
        offscreen_rate: fraction in [0, 1) of the other training clips (not faulty) whose audio also
            carries the sound of a class the frame does not show, ``offscreen_db`` relative to the
            on-screen sound (off-screen sound).
        offscreen_db: level of the off-screen sound against the on-screen one, in dB (<= 0).
        silent_rate: fraction in [0, 1) of the other training clips (neither faulty nor off-screen)
            whose sounding object is silent: their audio is the background noise alone.
    """

    seed: int = 0
    num_classes: int = 10
    num_train: int = 2000
    num_test: int = 500
    faulty_positive_rate: float = 0.2
    snr_db: float = 10.0
    min_distractors: int = 0
    max_distractors: int = 2
    centre_bias: float = -0.5
    clutter: float = 1.0
    heard_fraction: float = 0.5
    image_size: int = 224
    sample_rate: int = 16000
    seconds: float = 3.0
    jpeg_quality: int = 90
    box_stats: str | None = None
    num_val: int = 500
    instance_coupling: float = 0.0
    faulty_source: str = "group"
    offscreen_rate: float = 0.0
    offscreen_db: float = -6.0
    silent_rate: float = 0.0

    def __post_init__(self) -> None:
        check_int_in("seed", self.seed, 0, 2**63 - 1)
        check_int_in("num_classes", self.num_classes, 2, 1000)
        check_int_in("num_train", self.num_train, 1)
        check_int_in("num_test", self.num_test, 1)
        check_float_in("faulty_positive_rate", self.faulty_positive_rate, 0.0, 1.0, high_open=True)
        check_float_in("snr_db", self.snr_db, -30.0, 100.0)
        check_int_in("min_distractors", self.min_distractors, 0, 8)
        check_int_in("max_distractors", self.max_distractors, 0, 8)
        if self.max_distractors < self.min_distractors:
            raise ValueError(
                f"max_distractors must be >= min_distractors ({self.min_distractors}), got {self.max_distractors}"
            )
        check_float_in("centre_bias", self.centre_bias, -1.0, 1.0, low_open=True, high_open=True)
        check_float_in("clutter", self.clutter, 0.0, 10.0)
        check_float_in("heard_fraction", self.heard_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_int_in("image_size", self.image_size, 32, 1024)
        check_int_in("sample_rate", self.sample_rate, 8000, 96000)
        check_float_in("seconds", self.seconds, 0.1, 60.0)
        check_int_in("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.box_stats is not None and not isinstance(self.box_stats, str):
            raise TypeError(f"box_stats must be a path string or None, got {type(self.box_stats).__name__}")
        check_int_in("num_val", self.num_val, 0)
        check_float_in("instance_coupling", self.instance_coupling, 0.0, 1.0)
        if self.faulty_source not in FAULTY_SOURCES:
            raise ValueError(f"faulty_source: expected one of {FAULTY_SOURCES}, got {self.faulty_source!r}")
        check_float_in("offscreen_rate", self.offscreen_rate, 0.0, 1.0, high_open=True)
        check_float_in("offscreen_db", self.offscreen_db, -60.0, 0.0)
        check_float_in("silent_rate", self.silent_rate, 0.0, 1.0, high_open=True)
        if self.faulty_positive_rate + self.offscreen_rate + self.silent_rate >= 1.0:
            raise ValueError(f"faulty_positive_rate + offscreen_rate + silent_rate: expected < 1 (disjoint sets of "
                             f"training clips), got {self.faulty_positive_rate} + {self.offscreen_rate} + "
                             f"{self.silent_rate}")

    @property
    def num_samples(self) -> int:
        """Samples per clip, ``round(seconds * sample_rate)``."""
        return int(round(self.seconds * self.sample_rate))

    @property
    def num_heard(self) -> int:
        """Number of heard classes, ``round(heard_fraction * K)`` clipped to [1, K - 1]."""
        return min(max(int(round(self.heard_fraction * self.num_classes)), 1), self.num_classes - 1)

    @property
    def noisy_train(self) -> bool:
        """Whether any training clip is off-screen or silent (the noisy-clip stream is drawn)."""
        return self.offscreen_rate > 0 or self.silent_rate > 0

    def replace(self, **changes: Any) -> EmbeddedConfig:
        """A copy with some fields changed (validated); unknown names raise ``TypeError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown EmbeddedConfig field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)


#: The earlier name of :class:`EmbeddedConfig` (deprecated, CHANGELOG.md).
SyntheticConfig = EmbeddedConfig

#: The knobs of ``"vggsound-like"`` over ``"default"``: the regime of VGGSound under the paper's protocol.
#: 160 classes: at the studies' batch of 64 an anchor meets 0.36 same-class negatives on average
#: (``same_class_negatives_per_anchor``), VGGSound's 309 classes at batch 128 about 0.41, against 6.3 for
#: ``"default"`` (10 classes); same-class clips differ by ear (``instance_coupling``); faulty positives carry an
#: off-screen class; some clips have an off-screen sound or a silent object. The three rates are the kit's
#: assumptions, not measurements of VGGSound (none is published); the negatives study varies K and the
#: faulty-positive rate.
VGGSOUND_LIKE: dict[str, Any] = dict(num_classes=160, instance_coupling=1.0, faulty_source="offscreen",
                                     offscreen_rate=0.1, silent_rate=0.05)

#: Named configurations. "smoke": tests and CI; "default": the embedded default dataset (2,000 / 500 clips,
#: 10 classes); "vggsound-like": the same size in VGGSound's regime (:data:`VGGSOUND_LIKE`); "full": a larger
#: set for longer runs.
PRESETS: dict[str, EmbeddedConfig] = {
    "smoke": EmbeddedConfig(num_train=400, num_test=150, num_val=100),
    "default": EmbeddedConfig(),
    "vggsound-like": EmbeddedConfig(**VGGSOUND_LIKE),
    "full": EmbeddedConfig(num_train=10000, num_test=2000),
}


def config_hash(config: EmbeddedConfig) -> str:
    """16 hex digits: sha256 of the generator version, every config field and the box-statistics file's bytes."""
    if not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig, got {type(config).__name__}")
    key = {
        "version": GENERATOR_VERSION,
        "config": dataclasses.asdict(config),
        "box_stats_sha256": _stats_sha256(config),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _stats_path(config: EmbeddedConfig) -> Path:
    return DEFAULT_STATS_PATH if config.box_stats is None else Path(config.box_stats)


def _stats_sha256(config: EmbeddedConfig) -> str:
    return hashlib.sha256(_stats_path(config).read_bytes()).hexdigest()
