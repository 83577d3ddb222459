"""Embedded default dataset: a synthetic audio-visual localisation set in the VGGSound / VGG-SS layout.

Every clip is drawn deterministically from ``(seed, split, index)``, so the same
configuration always gives byte-identical files, and the loaders, trainers and the
evaluator of ``baselines`` run on it unchanged (SPEC sections 6 and 7).

What a clip is
--------------
* ``K = num_classes`` sound classes. Class ``k`` has

  - an appearance: hue ``k / K`` (saturated colour), one of 8 shapes (``k mod 8``:
    ellipse, rectangle, diamond, triangle, ring, cross, octagon, hourglass) and one of 6
    textures (``k mod 6``: solid, horizontal / vertical / diagonal stripes, checker,
    dots) in a darker shade of the hue; (shape, texture) pairs are unique for K <= 24;
  - a sound: a harmonic tone with fundamental ``f0_k = 140 * 10 ** (k / (K - 1))`` Hz
    (log-spaced 140 .. 1400 Hz, ~4.4 semitones apart for K = 10), ``n_k`` harmonics with
    geometric decay, amplitude modulation at ``am_k`` Hz (2 .. 12 Hz), optional
    vibrato, plus a Gaussian noise band centred at ``c_k`` (2 .. 6.5 kHz).

  Instances jitter every parameter a little (hue +-0.015, f0 +-5 %, AM rate +-10 %,
  texture period 8 .. 16 px, random phases, level and shading).
* The frame (``image_size`` x ``image_size`` RGB): a smooth desaturated random
  background with low-saturation clutter shapes (``clutter``) and pixel noise; 0 ..
  ``max_distractors`` silent objects of other classes; the sounding object drawn last,
  fully visible, filling its box (every shape touches the four sides of its box).
* The box: ONE box per clip, the sounding object's, snapped to whole pixels. Its width
  and height fractions are drawn by inverse CDF from the quantiles (every 5 %) of the
  real VGG-SS clip envelopes (bounding box of a clip's boxes) in
  ``vggss_box_stats.json`` (``baselines/data/box_stats.py``), coupled by a Gaussian
  copula with the real Spearman correlation (0.50). Multi-box clips (10 % of VGG-SS)
  are not modelled, so the area of our box follows the envelope area, which is a
  little larger than the union area of a multi-box clip.
* The position: box centre ``0.5 + t * (1 - w) / 2`` per axis, ``t = sign(u) |u| ** g``,
  ``u ~ U(-1, 1)``, ``g = (1 + centre_bias) / (1 - centre_bias)``: ``centre_bias = 0``
  is uniform over all positions that keep the box inside the frame, ``> 0`` pulls
  boxes towards the centre, ``< 0`` pushes them to the edges. Distractors use the same
  size and position law; each takes the least-overlapping of 8 candidate positions.

  Why the default is ``centre_bias = -0.5`` (edge-biased, ``E|t| = 0.75``): VGG-SS boxes
  are large, and under the median-threshold protocol (at least half the frame is
  predicted) the fixed centred map scores cIoU 34.0 on real VGG-SS out of a ceiling of
  50.5 (perfect localisation). With VGG-SS sizes and *uniform* positions it scores
  ~36 on our boxes, i.e. no lower than on the real benchmark; with ``-0.5`` it scores
  ~28 (ceiling ~51, unchanged: it depends on box sizes only), so a no-model prior
  stays clearly below what localisation can reach. The very large boxes (17 % of the
  clips are wider and taller than 0.7) contain the centre wherever they are, so no
  position law brings it much below ~20.
* The audio: 16 kHz mono, ``seconds`` long (48,000 samples), the class sound plus
  coloured background noise at ``snr_db``, peak level 0.3 .. 0.8, PCM_16.

Noisy correspondences (the paper's motivation), training split only:

* faulty positives: ``round(faulty_positive_rate * num_train)`` training clips get the
  audio of another training clip of a *different* class (from the same heard /
  unheard group, so heard-class training never hears an unheard class); the list is in
  ``meta.json["faulty_positives"]`` (``{clip id: id whose audio it carries}``);
* faulty negatives: classes are few relative to the batch (K = 10, batch >= 32), so
  same-class clips meet as negatives in every batch.

The test split is clean (every clip carries its own audio) and annotated.

Open set (paper Table 4): ``round(heard_fraction * K)`` classes (seeded choice) are
*heard*. ``heard_train.txt`` lists the training clips of heard classes;
``heard_test.csv`` / ``unheard_test.csv`` the test clips of heard / unheard classes.
Distractors come from the clip's own group.

On disk (``root``)::

    frames/<id>.jpg      RGB, image_size x image_size, JPEG quality 90
    audio/<id>.wav       16 kHz mono PCM_16, round(seconds * sample_rate) samples
    vggss.json           test annotations [{"file", "class", "bbox": [[x0, y0, x1, y1]]}],
                         corners normalised to [0, 1]; int(v * image_size) gives the pixel
    train.txt            training ids, one per line ("\\n")
    test.csv             test ids, one per line, "\\r\\n" line ends (as vggss_test.csv)
    heard_train.txt, heard_test.csv, unheard_test.csv
    objects.json         every clip: split, class, box, distractors, audio source
    meta.json            generator version, config, config hash, classes, heard / unheard
                         classes, counts, faulty positives (written last; the directory
                         appears by an atomic rename only once complete)

Ids are ``train_000000`` ... and ``test_000000`` ... .

API::

    ensure_dataset(root=None, preset="default", config=None, **overrides) -> Path
    generate(root, config, *, workers=None, overwrite=False) -> Path
    render_clip(config, split, index) -> RenderedClip      # one clip in memory

CLI: ``python -m baselines.data.synthetic [--out DIR] [--preset smoke|default|full] [--seed N]``.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from baselines.data.box_stats import DEFAULT_STATS_PATH, QUANTILE_LEVELS, load_box_stats

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "TEXTURES",
    "SPLITS",
    "SyntheticConfig",
    "PRESETS",
    "ClassPrototype",
    "class_prototypes",
    "BoxSizeSampler",
    "ClipPlan",
    "DatasetPlan",
    "plan_dataset",
    "RenderedClip",
    "render_clip",
    "sounding_boxes",
    "render_audio",
    "config_hash",
    "default_cache_root",
    "is_complete",
    "read_meta",
    "generate",
    "ensure_dataset",
    "main",
]

#: Bumped whenever the generated bytes change for a given config (part of the cache key).
GENERATOR_VERSION: str = "1.1.0"
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "diamond", "triangle", "ring", "cross", "octagon", "hourglass")
TEXTURES: tuple[str, ...] = ("solid", "horizontal stripes", "vertical stripes", "diagonal stripes", "checker", "dots")
SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}
_STREAM_PLAN, _STREAM_IMAGE, _STREAM_AUDIO = 0, 1, 2
_MIN_BOX_PX = 8
_DISTRACTOR_CANDIDATES = 8


# --------------------------------------------------------------------------- config


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _check_float(name: str, value: object, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name} must be a finite number in {lb}{lo}, {hi}{rb}, got {value!r}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic dataset (all of them enter the cache key).

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
            > 0 towards the frame centre, < 0 towards the edges (see module doc).
        clutter: background clutter strength, >= 0 (mean number of clutter shapes is
            ``3 * clutter``; 0 leaves only the smooth background and pixel noise).
        heard_fraction: fraction of classes that are "heard" (open-set split), in (0, 1);
            at least one class lands on each side.
        image_size: frame side in pixels (224: the protocol's test resolution).
        sample_rate: audio rate in Hz (16000: the protocol's rate).
        seconds: audio length in seconds (3.0: the protocol's clip).
        jpeg_quality: Pillow JPEG quality of the frames.
        box_stats: path of the box statistics JSON (``None``: the committed VGG-SS
            statistics ``baselines/data/vggss_box_stats.json``); its content hash enters
            the cache key.
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

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("num_classes", self.num_classes, 2, 1000)
        _check_int("num_train", self.num_train, 1)
        _check_int("num_test", self.num_test, 1)
        _check_float("faulty_positive_rate", self.faulty_positive_rate, 0.0, 1.0, hi_open=True)
        _check_float("snr_db", self.snr_db, -30.0, 100.0)
        _check_int("min_distractors", self.min_distractors, 0, 8)
        _check_int("max_distractors", self.max_distractors, 0, 8)
        if self.max_distractors < self.min_distractors:
            raise ValueError(
                f"max_distractors must be >= min_distractors ({self.min_distractors}), got {self.max_distractors}"
            )
        _check_float("centre_bias", self.centre_bias, -1.0, 1.0, lo_open=True, hi_open=True)
        _check_float("clutter", self.clutter, 0.0, 10.0)
        _check_float("heard_fraction", self.heard_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_int("image_size", self.image_size, 32, 1024)
        _check_int("sample_rate", self.sample_rate, 8000, 96000)
        _check_float("seconds", self.seconds, 0.1, 60.0)
        _check_int("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.box_stats is not None and not isinstance(self.box_stats, str):
            raise TypeError(f"box_stats must be a path string or None, got {type(self.box_stats).__name__}")

    @property
    def num_samples(self) -> int:
        """Samples per clip, ``round(seconds * sample_rate)``."""
        return int(round(self.seconds * self.sample_rate))

    @property
    def num_heard(self) -> int:
        """Number of heard classes, ``round(heard_fraction * K)`` clipped to [1, K - 1]."""
        return min(max(int(round(self.heard_fraction * self.num_classes)), 1), self.num_classes - 1)

    def replace(self, **changes: Any) -> "SyntheticConfig":
        """A copy with some fields changed (validated); unknown names raise ``TypeError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown SyntheticConfig field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)


#: Named configurations. "smoke": tests and CI; "default": the embedded default
#: dataset (2,000 / 500 clips); "full": a larger set for longer runs.
PRESETS: dict[str, SyntheticConfig] = {
    "smoke": SyntheticConfig(num_train=400, num_test=150),
    "default": SyntheticConfig(),
    "full": SyntheticConfig(num_train=10000, num_test=2000),
}


def config_hash(config: SyntheticConfig) -> str:
    """16 hex digits: sha256 of the generator version, every config field and the box-statistics file's bytes."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    key = {
        "version": GENERATOR_VERSION,
        "config": dataclasses.asdict(config),
        "box_stats_sha256": _stats_sha256(config),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _stats_path(config: SyntheticConfig) -> Path:
    return DEFAULT_STATS_PATH if config.box_stats is None else Path(config.box_stats)


def _stats_sha256(config: SyntheticConfig) -> str:
    return hashlib.sha256(_stats_path(config).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassPrototype:
    """Appearance and sound of one class (module doc); a pure function of ``(index, num_classes)``."""

    index: int
    name: str
    hue: float
    shape: str
    texture: str
    f0_hz: float
    num_harmonics: int
    harmonic_decay: float
    am_rate_hz: float
    fm_rate_hz: float
    fm_depth: float
    noise_centre_hz: float
    noise_bandwidth_hz: float
    noise_level: float


def class_prototypes(num_classes: int) -> tuple[ClassPrototype, ...]:
    """The ``num_classes`` class prototypes.

    For class ``k`` and ``s = k / (K - 1)``: ``f0 = 140 * 10 ** s`` Hz,
    ``num_harmonics = 1 + (2k mod 5)``, ``harmonic_decay = 0.35 + 0.5 ((3k mod 4) / 3)``,
    ``am_rate = 2 + 10 ((3k mod K) / (K - 1))`` Hz, ``fm_rate = 4 + (k mod 3)`` Hz,
    ``fm_depth = 0.01 (7k mod 4)`` (relative), noise band centre
    ``2000 + 4500 ((7k mod K) / (K - 1))`` Hz, bandwidth 500 Hz, level 0.5.
    """
    _check_int("num_classes", num_classes, 2, 1000)
    k_all = num_classes
    out = []
    for k in range(k_all):
        s = k / (k_all - 1)
        shape = SHAPES[k % len(SHAPES)]
        texture = TEXTURES[k % len(TEXTURES)]
        out.append(
            ClassPrototype(
                index=k,
                name=f"synthetic {k:02d} {shape}, {texture}",
                hue=k / k_all,
                shape=shape,
                texture=texture,
                f0_hz=140.0 * 10.0**s,
                num_harmonics=1 + (2 * k) % 5,
                harmonic_decay=0.35 + 0.5 * ((3 * k) % 4) / 3.0,
                am_rate_hz=2.0 + 10.0 * ((3 * k) % k_all) / (k_all - 1),
                fm_rate_hz=4.0 + (k % 3),
                fm_depth=0.01 * ((7 * k) % 4),
                noise_centre_hz=2000.0 + 4500.0 * ((7 * k) % k_all) / (k_all - 1),
                noise_bandwidth_hz=500.0,
                noise_level=0.5,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- box sizes


def _std_normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


class BoxSizeSampler:
    """Draws (width, height) fractions of the frame from VGG-SS box statistics.

    Inverse CDF: ``w = Q_w(u_w)``, ``h = Q_h(u_h)`` with ``Q`` the piecewise-linear
    interpolation of the 21 quantiles (levels 0, 0.05, .., 1) of the envelope width /
    height. ``(u_w, u_h) = (Phi(z_1), Phi(z_2))`` for standard normals with correlation
    ``r = 2 sin(pi rho_s / 6)`` (the Pearson correlation whose Gaussian copula has
    Spearman correlation ``rho_s``, the real value from the statistics).
    """

    def __init__(self, stats: dict[str, Any]) -> None:
        self.levels = np.asarray(QUANTILE_LEVELS, dtype=np.float64)
        self.width_quantiles = np.asarray(stats["envelope_width_fraction"], dtype=np.float64)
        self.height_quantiles = np.asarray(stats["envelope_height_fraction"], dtype=np.float64)
        self.spearman = float(stats["envelope_width_height_spearman"])
        self.pearson = 2.0 * math.sin(math.pi * self.spearman / 6.0)

    def width_cdf(self, w: np.ndarray) -> np.ndarray:
        """The model CDF of the width (inverse of ``Q_w``; used by tests)."""
        return _quantile_cdf(self.width_quantiles, self.levels, w)

    def height_cdf(self, h: np.ndarray) -> np.ndarray:
        """The model CDF of the height."""
        return _quantile_cdf(self.height_quantiles, self.levels, h)

    def sample(self, rng: np.random.Generator) -> tuple[float, float]:
        """One ``(w, h)`` pair in (0, 1]."""
        z1, z2 = rng.standard_normal(2)
        z2 = self.pearson * z1 + math.sqrt(1.0 - self.pearson**2) * z2
        u1, u2 = _std_normal_cdf(float(z1)), _std_normal_cdf(float(z2))
        w = float(np.interp(u1, self.levels, self.width_quantiles))
        h = float(np.interp(u2, self.levels, self.height_quantiles))
        return w, h


def _quantile_cdf(quantiles: np.ndarray, levels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """CDF of the piecewise-linear quantile function: ``F(x) = max{p : Q(p) <= x}`` (handles flat runs / atoms)."""
    x = np.asarray(x, dtype=np.float64)
    # on each segment [q_i, q_{i+1}] with q_i < q_{i+1}, F is linear; at atoms (equal q's) F jumps.
    idx = np.searchsorted(quantiles, x, side="right") - 1  # last i with q_i <= x
    out = np.empty_like(x)
    below = idx < 0
    above = idx >= len(quantiles) - 1
    mid = ~(below | above)
    i = idx[mid]
    q0, q1 = quantiles[i], quantiles[i + 1]
    frac = np.where(q1 > q0, (x[mid] - q0) / np.where(q1 > q0, q1 - q0, 1.0), 0.0)
    out[mid] = levels[i] + frac * (levels[i + 1] - levels[i])
    out[below] = 0.0
    out[above] = 1.0
    return out


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ClipPlan:
    """What is decided for one clip before rendering (from the plan stream of the seed)."""

    clip_id: str
    split: str
    index: int
    class_index: int
    audio_source: int  # index (same split) of the clip whose audio this clip carries (== index unless faulty)
    group: tuple[int, ...]  # classes of the clip's heard / unheard group (distractor pool)


@dataclass(frozen=True)
class DatasetPlan:
    """Class assignment, open-set split and faulty positives of a config."""

    config: SyntheticConfig
    classes: tuple[ClassPrototype, ...]
    heard_classes: tuple[int, ...]
    unheard_classes: tuple[int, ...]
    clips: dict[str, tuple[ClipPlan, ...]]  # split -> clips in index order

    def faulty_positives(self) -> dict[str, str]:
        """``{training clip id: id of the clip whose audio it carries}`` for the faulty pairs."""
        train = self.clips["train"]
        return {c.clip_id: train[c.audio_source].clip_id for c in train if c.audio_source != c.index}


def _clip_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def plan_dataset(config: SyntheticConfig) -> DatasetPlan:
    """Deterministic plan: balanced classes per split (``arange(n) mod K``, shuffled), heard classes
    (a seeded choice of ``config.num_heard``), and the faulty-positive sources of the training split."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    rng = np.random.default_rng([config.seed, _STREAM_PLAN])
    k = config.num_classes
    perm = rng.permutation(k)
    heard = tuple(sorted(int(c) for c in perm[: config.num_heard]))
    unheard = tuple(sorted(int(c) for c in perm[config.num_heard :]))
    group_of = {c: heard for c in heard} | {c: unheard for c in unheard}

    clips: dict[str, tuple[ClipPlan, ...]] = {}
    for split, n in (("train", config.num_train), ("test", config.num_test)):
        labels = rng.permutation(np.arange(n) % k)
        sources = np.arange(n)
        if split == "train" and config.faulty_positive_rate > 0:
            n_faulty = int(round(config.faulty_positive_rate * n))
            chosen = np.sort(rng.choice(n, size=n_faulty, replace=False))
            pools = {}
            for c in range(k):  # clips of the other classes of c's group (any other class if the group has one)
                pool = np.flatnonzero(np.isin(labels, group_of[c]) & (labels != c))
                pools[c] = pool if pool.size else np.flatnonzero(labels != c)
            for i in chosen:
                pool = pools[int(labels[i])]
                if pool.size == 0:
                    raise ValueError(
                        f"faulty_positive_rate={config.faulty_positive_rate} needs training clips of at least "
                        f"two classes, got num_train={n}"
                    )
                sources[i] = int(pool[rng.integers(pool.size)])
        clips[split] = tuple(
            ClipPlan(
                clip_id=_clip_id(split, i),
                split=split,
                index=i,
                class_index=int(labels[i]),
                audio_source=int(sources[i]),
                group=group_of[int(labels[i])],
            )
            for i in range(n)
        )
    return DatasetPlan(config, class_prototypes(k), heard, unheard, clips)


# --------------------------------------------------------------------------- rendering


@dataclass
class RenderedClip:
    """One clip in memory (the clip's own audio, before any faulty-positive swap).

    ``image``: uint8 ``[S, S, 3]``; ``audio``: float32 ``[num_samples]`` in [-1, 1];
    ``box_px``: ``(x0, y0, x1, y1)`` pixel corners (end exclusive) of the sounding object;
    ``object_mask``: bool ``[S, S]``, the sounding object's visible pixels;
    ``distractors``: ``[(class index, (x0, y0, x1, y1)), ...]``.
    """

    clip_id: str
    class_index: int
    image: np.ndarray
    audio: np.ndarray
    box_px: tuple[int, int, int, int]
    object_mask: np.ndarray
    distractors: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255.0


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, du: float, dv: float) -> np.ndarray:
    """Pixels that the shape touches; ``u, v`` in (-1, 1): box-normalised pixel centres (``u = -1``: left edge).

    ``du, dv``: half a pixel in these units (``1 / w``, ``1 / h`` for a ``w x h`` box). A pixel
    is in the shape when the shape holds at the pixel's point nearest to the shape (e.g.
    ``|u| - du, |v| - dv`` for shapes that shrink away from the centre), so every shape,
    which reaches the four sides of its box in the continuum, also has pixels in the
    first and last row and column of the box: the box is tight.
    """
    au = np.maximum(np.abs(u) - du, 0.0)  # nearest-to-centre point of the pixel
    av = np.maximum(np.abs(v) - dv, 0.0)
    if shape == "ellipse":
        return au * au + av * av <= 1.0
    if shape == "rectangle":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "triangle":  # apex at the top (v = -1), base at the bottom (v = 1)
        return au <= (np.minimum(v + dv, 1.0) + 1.0) / 2.0
    if shape == "ring":  # outer ellipse touched, inner hole (radius 0.55) judged at the pixel centre
        return (au * au + av * av <= 1.0) & (u * u + v * v >= 0.55**2)
    if shape == "cross":
        return (au <= 0.34) | (av <= 0.34)
    if shape == "octagon":
        return au + av <= 1.4
    if shape == "hourglass":  # two triangles meeting at the centre
        return au <= np.minimum(np.abs(v) + dv, 1.0)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _texture(texture: str, px: np.ndarray, py: np.ndarray, period: float, phase: float) -> np.ndarray:
    """1 where the primary colour shows, 0 where the darker shade shows; ``px, py`` pixel offsets."""
    if texture == "solid":
        return np.ones(np.broadcast(px, py).shape, dtype=bool)
    if texture == "horizontal stripes":
        return ((py + phase) / period) % 1.0 < 0.5
    if texture == "vertical stripes":
        return ((px + phase) / period) % 1.0 < 0.5
    if texture == "diagonal stripes":
        return ((px + py + phase) / (period * 1.4142)) % 1.0 < 0.5
    if texture == "checker":
        return (np.floor((px + phase) / period) + np.floor((py + phase) / period)) % 2 == 0
    if texture == "dots":
        dx = ((px + phase) / period) % 1.0 - 0.5
        dy = ((py + phase) / period) % 1.0 - 0.5
        return dx * dx + dy * dy > 0.3**2
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def _box_position(rng: np.random.Generator, size_px: int, frame: int, centre_bias: float, n: int = 1) -> np.ndarray:
    """Top-left pixel(s) of a box of ``size_px`` along one axis: centre ``0.5 + t (1 - w) / 2``, ``t = sign(u)|u|^g``."""
    g = (1.0 + centre_bias) / (1.0 - centre_bias)
    u = rng.uniform(-1.0, 1.0, size=n)
    t = np.sign(u) * np.abs(u) ** g
    slack = frame - size_px
    start = np.rint(slack * (t + 1.0) / 2.0).astype(np.int64)
    return np.clip(start, 0, slack)


def _box_size_px(sampler: BoxSizeSampler, rng: np.random.Generator, frame: int) -> tuple[int, int]:
    w, h = sampler.sample(rng)
    wp = int(min(max(round(w * frame), _MIN_BOX_PX), frame))
    hp = int(min(max(round(h * frame), _MIN_BOX_PX), frame))
    return wp, hp


def _draw_object(
    img: np.ndarray,
    rng: np.random.Generator,
    proto: ClassPrototype,
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Paint one class object filling ``box`` into ``img`` (float32 [S, S, 3], in place); returns its mask [S, S]."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    u = (xs[None, :] - w / 2.0) / (w / 2.0)
    v = (ys[:, None] - h / 2.0) / (h / 2.0)
    local = _shape_mask(proto.shape, u, v, 1.0 / w, 1.0 / h)
    hue = proto.hue + rng.uniform(-0.015, 0.015)
    sat = rng.uniform(0.75, 1.0)
    val = rng.uniform(0.75, 1.0)
    primary = _hsv(hue, sat, val)
    secondary = _hsv(hue, sat, val * 0.45)
    period = rng.uniform(8.0, 16.0)
    phase = rng.uniform(0.0, period)
    pattern = _texture(proto.texture, xs[None, :], ys[:, None], period, phase)
    colour = np.where(pattern[..., None], primary, secondary)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + 0.15 * (math.cos(angle) * u + math.sin(angle) * v)
    colour = np.clip(colour * shade[..., None].astype(np.float32), 0.0, 255.0)
    region = img[y0:y1, x0:x1]
    region[local] = colour[local]
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = local
    return mask


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """Smooth desaturated colour field + low-saturation clutter shapes, float32 [S, S, 3]."""
    from PIL import Image

    grid = int(rng.integers(3, 8))
    low = rng.uniform(30.0, 225.0, size=(grid, grid, 3)).astype(np.float32)
    grey = low.mean(axis=2, keepdims=True)
    low = grey + rng.uniform(0.2, 0.45) * (low - grey)
    img = np.asarray(
        Image.fromarray(low.round().astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32
    ).copy()
    n_clutter = int(rng.poisson(3.0 * clutter)) if clutter > 0 else 0
    for _ in range(n_clutter):
        wp = int(rng.integers(max(4, size // 20), max(5, size // 4)))
        hp = int(rng.integers(max(4, size // 20), max(5, size // 4)))
        x0 = int(rng.integers(0, size - wp + 1))
        y0 = int(rng.integers(0, size - hp + 1))
        xs = np.arange(wp, dtype=np.float32) + 0.5
        ys = np.arange(hp, dtype=np.float32) + 0.5
        u = (xs[None, :] - wp / 2.0) / (wp / 2.0)
        v = (ys[:, None] - hp / 2.0) / (hp / 2.0)
        local = _shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], u, v, 1.0 / wp, 1.0 / hp)
        colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        img[y0 : y0 + hp, x0 : x0 + wp][local] = colour
    return img


def _least_overlap_box(
    rng: np.random.Generator,
    wp: int,
    hp: int,
    size: int,
    centre_bias: float,
    occupied: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    xs = _box_position(rng, wp, size, centre_bias, _DISTRACTOR_CANDIDATES)
    ys = _box_position(rng, hp, size, centre_bias, _DISTRACTOR_CANDIDATES)
    overlap = np.zeros(_DISTRACTOR_CANDIDATES, dtype=np.int64)
    for bx0, by0, bx1, by1 in occupied:
        ix = np.clip(np.minimum(xs + wp, bx1) - np.maximum(xs, bx0), 0, None)
        iy = np.clip(np.minimum(ys + hp, by1) - np.maximum(ys, by0), 0, None)
        overlap += ix * iy
    j = int(np.argmin(overlap))
    return int(xs[j]), int(ys[j]), int(xs[j]) + wp, int(ys[j]) + hp


def _image_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _STREAM_IMAGE, _SPLIT_CODE[split], index])


def _sounding_box(config: SyntheticConfig, sampler: BoxSizeSampler, rng: np.random.Generator) -> tuple[int, int, int, int]:
    size = config.image_size
    wp, hp = _box_size_px(sampler, rng, size)
    x0 = int(_box_position(rng, wp, size, config.centre_bias)[0])
    y0 = int(_box_position(rng, hp, size, config.centre_bias)[0])
    return x0, y0, x0 + wp, y0 + hp


def sounding_boxes(config: SyntheticConfig, split: str) -> np.ndarray:
    """Pixel boxes ``[n, 4]`` (int64, ``x0, y0, x1, y1``, end exclusive) of every clip of ``split``.

    The same boxes the generated files carry (``int(v * image_size)`` of the stored
    corners), computed without rendering: for quick statistics of a configuration.
    """
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = config.num_train if split == "train" else config.num_test
    sampler = _sampler(config)
    return np.array([_sounding_box(config, sampler, _image_rng(config, split, i)) for i in range(n)], dtype=np.int64)


def _render_image(
    config: SyntheticConfig,
    classes: Sequence[ClassPrototype],
    sampler: BoxSizeSampler,
    clip: ClipPlan,
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    size = config.image_size
    rng = _image_rng(config, clip.split, clip.index)
    box = _sounding_box(config, sampler, rng)  # drawn first: it does not depend on anything else

    pool = [c for c in clip.group if c != clip.class_index]
    n_dist = int(rng.integers(config.min_distractors, config.max_distractors + 1))
    n_dist = min(n_dist, len(pool))
    dist_classes = rng.choice(pool, size=n_dist, replace=False).tolist() if n_dist else []
    distractors: list[tuple[int, tuple[int, int, int, int]]] = []
    occupied = [box]
    for c in dist_classes:
        dw, dh = _box_size_px(sampler, rng, size)
        dbox = _least_overlap_box(rng, dw, dh, size, config.centre_bias, occupied)
        occupied.append(dbox)
        distractors.append((int(c), dbox))

    img = _background(rng, size, config.clutter)
    for c, dbox in distractors:
        _draw_object(img, rng, classes[c], dbox)
    mask = _draw_object(img, rng, classes[clip.class_index], box)
    img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)  # pixel noise, uniform on {-8, .., 8}
    return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8), box, mask, distractors


def _white_spectrum(rng: np.random.Generator, m: int) -> np.ndarray:
    """rfft-domain white Gaussian noise (independent real / imaginary parts), ``[m]`` complex64."""
    z = rng.standard_normal((2, m), dtype=np.float32)
    return z[0] + np.complex64(1j) * z[1]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


def render_audio(config: SyntheticConfig, split: str, index: int, class_index: int) -> np.ndarray:
    """The natural audio of clip ``(split, index)`` of class ``class_index``: float32 ``[num_samples]``.

    ``x = g * y / max|y|``, ``y = a(t) (tone / rms(tone) + 0.5 band / rms(band)) + noise`` with
    ``tone = sum_h d^(h-1) sin(h phi(t) + phi_h)``,
    ``phi(t) = 2 pi f0 (t - D / (2 pi r) cos(2 pi r t))`` (vibrato rate ``r``, depth ``D``),
    ``a(t) = 1 - m (1 - cos(2 pi am t + phi_a)) / 2`` (depth ``m ~ U(0.5, 0.9)``), the noise
    band white noise shaped by ``exp(-(f - c_k)^2 / (2 (bw / 2)^2))``, coloured background
    noise (spectral slope ``f^(-beta/2)``, ``beta ~ U(0, 1)``) scaled to
    ``rms(noise) = rms(source) 10^(-snr_db / 20)``, and peak level ``g ~ U(0.3, 0.8)``.
    Harmonics above 0.475 ``sample_rate`` are dropped.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_int("class_index", class_index, 0, config.num_classes - 1)
    proto = class_prototypes(config.num_classes)[class_index]
    rng = np.random.default_rng([config.seed, _STREAM_AUDIO, _SPLIT_CODE[split], index])
    sr, n = config.sample_rate, config.num_samples
    t = np.arange(n, dtype=np.float64) / sr
    t32 = t.astype(np.float32)  # slow oscillations (vibrato, AM: < 250 rad over 3 s) are exact enough in float32
    f0 = proto.f0_hz * math.exp(float(np.clip(rng.normal(0.0, 0.02), -0.05, 0.05)))
    fm_rate = proto.fm_rate_hz
    phi = 2.0 * math.pi * f0 * t
    if proto.fm_depth > 0:
        vibrato = np.cos(np.float32(2.0 * math.pi * fm_rate) * t32 + np.float32(rng.uniform(0, 2 * math.pi)))
        phi -= f0 * proto.fm_depth / fm_rate * vibrato
    phi = np.mod(phi, 2.0 * math.pi)  # reduced in float64 so that float32 h * phi stays accurate
    phi32 = phi.astype(np.float32)
    tone = np.zeros(n, dtype=np.float32)
    for h in range(1, proto.num_harmonics + 1):
        if h * f0 * (1.0 + proto.fm_depth) > 0.475 * sr:
            break
        tone += np.float32(proto.harmonic_decay ** (h - 1)) * np.sin(
            np.float32(h) * phi32 + np.float32(rng.uniform(0.0, 2.0 * math.pi))
        )
    f = np.fft.rfftfreq(n, 1.0 / sr)
    centre = min(proto.noise_centre_hz * rng.uniform(0.97, 1.03), 0.45 * sr)
    # the Gaussian band gain is < 1e-9 beyond 6.5 sigma: only those bins get noise
    half = 6.5 * proto.noise_bandwidth_hz / 2.0
    lo, hi = np.searchsorted(f, centre - half), np.searchsorted(f, centre + half)
    band_spec = np.zeros(f.size, dtype=np.complex64)
    band_gain = np.exp(-0.5 * ((f[lo:hi] - centre) / (proto.noise_bandwidth_hz / 2.0)) ** 2)
    band_spec[lo:hi] = _white_spectrum(rng, hi - lo) * band_gain.astype(np.float32)
    band = np.fft.irfft(band_spec, n).astype(np.float32)
    source = tone / np.float32(_rms(tone)) + np.float32(proto.noise_level / _rms(band)) * band
    am_rate = proto.am_rate_hz * rng.uniform(0.9, 1.1)
    am_depth = rng.uniform(0.5, 0.9)
    am_phase = np.float32(rng.uniform(0.0, 2.0 * math.pi))
    source *= 1.0 - np.float32(am_depth * 0.5) * (1.0 - np.cos(np.float32(2.0 * math.pi * am_rate) * t32 + am_phase))
    beta = rng.uniform(0.0, 1.0)
    slope = (np.maximum(f, 20.0) ** (-beta / 2.0)).astype(np.float32)
    noise = np.fft.irfft(_white_spectrum(rng, f.size) * slope, n).astype(np.float32)
    noise *= np.float32(_rms(source) / _rms(noise) * 10.0 ** (-config.snr_db / 20.0))
    y = source + noise
    gain = rng.uniform(0.3, 0.8)
    return (y * np.float32(gain / np.max(np.abs(y)))).astype(np.float32)


def _sampler(config: SyntheticConfig) -> BoxSizeSampler:
    return BoxSizeSampler(load_box_stats(_stats_path(config)))


def render_clip(config: SyntheticConfig, split: str, index: int, plan: DatasetPlan | None = None) -> RenderedClip:
    """Render clip ``index`` of ``split`` in memory (its own audio; ``plan`` is recomputed when not given)."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    plan = plan_dataset(config) if plan is None else plan
    n = len(plan.clips[split])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"index must be an int in [0, {n}) for split {split!r}, got {index!r}")
    clip = plan.clips[split][index]
    image, box, mask, distractors = _render_image(config, plan.classes, _sampler(config), clip)
    audio = render_audio(config, split, index, clip.class_index)
    return RenderedClip(clip.clip_id, clip.class_index, image, audio, box, mask, distractors)


# --------------------------------------------------------------------------- writing


def _pixel_to_fraction(k: int, size: int) -> float:
    """The float nearest to ``k / size`` with ``int(x * size) == k`` (the protocol truncates; ``k/size*size`` can be ``k - eps``)."""
    if k >= size:
        return 1.0
    x = k / size
    while int(x * size) < k:
        x = float(np.nextafter(x, 2.0))
    return x


def _box_fractions(box: tuple[int, int, int, int], size: int) -> list[float]:
    return [_pixel_to_fraction(int(v), size) for v in box]


def _write_clip(root: Path, config: SyntheticConfig, plan: DatasetPlan, sampler: BoxSizeSampler, clip: ClipPlan) -> dict[str, Any]:
    import soundfile as sf
    from PIL import Image

    image, box, _, distractors = _render_image(config, plan.classes, sampler, clip)
    Image.fromarray(image).save(root / "frames" / f"{clip.clip_id}.jpg", quality=config.jpeg_quality)
    src = plan.clips[clip.split][clip.audio_source]
    audio = render_audio(config, clip.split, src.index, src.class_index)
    sf.write(str(root / "audio" / f"{clip.clip_id}.wav"), audio, config.sample_rate, subtype="PCM_16")
    size = config.image_size
    return {
        "split": clip.split,
        "class_index": clip.class_index,
        "class": plan.classes[clip.class_index].name,
        "bbox": [_box_fractions(box, size)],
        "bbox_px": [list(box)],
        "distractors": [
            {"class_index": c, "class": plan.classes[c].name, "bbox": _box_fractions(b, size), "bbox_px": list(b)}
            for c, b in distractors
        ],
        "audio_source": src.clip_id,
        "audio_class_index": src.class_index,
    }


def _write_chunk(args: tuple[str, SyntheticConfig, str, int, int]) -> list[tuple[str, dict[str, Any]]]:
    root, config, split, start, stop = args
    plan = plan_dataset(config)
    sampler = _sampler(config)
    return [(c.clip_id, _write_clip(Path(root), config, plan, sampler, c)) for c in plan.clips[split][start:stop]]


def _write_lines(path: Path, ids: Sequence[str], newline: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("".join(f"{i}{newline}" for i in ids))


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")


def _meta(config: SyntheticConfig, plan: DatasetPlan, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "generator": "marginnce-loss synthetic audio-visual localisation set (baselines/data/synthetic.py)",
        "version": GENERATOR_VERSION,
        "config_hash": config_hash(config),
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "box_stats_sha256": _stats_sha256(config),
        "box_model": "one box per clip; envelope width/height quantiles of VGG-SS + Gaussian copula",
        "classes": [dataclasses.asdict(c) | {"heard": c.index in plan.heard_classes} for c in plan.classes],
        "heard_classes": list(plan.heard_classes),
        "unheard_classes": list(plan.unheard_classes),
        "files": {
            "frames": "frames/<id>.jpg",
            "audio": "audio/<id>.wav",
            "annotations": "vggss.json",
            "train": "train.txt",
            "test": "test.csv",
            "heard_train": "heard_train.txt",
            "heard_test": "heard_test.csv",
            "unheard_test": "unheard_test.csv",
            "objects": "objects.json",
        },
        "counts": counts,
        "faulty_positives": plan.faulty_positives(),
    }


def read_meta(root: str | Path) -> dict[str, Any]:
    """``meta.json`` of a generated dataset (``FileNotFoundError`` if it is not a complete dataset)."""
    path = Path(root) / "meta.json"
    with path.open("r", encoding="utf-8") as fh:
        return json.load(fh)


def is_complete(root: str | Path, config: SyntheticConfig) -> bool:
    """True when ``root`` holds a complete dataset generated from ``config`` (matching ``config_hash``)."""
    try:
        meta = read_meta(root)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    return meta.get("config_hash") == config_hash(config) and meta.get("version") == GENERATOR_VERSION


def _resolve_workers(workers: int | None, n: int) -> int:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
        if n < 200:  # process start-up costs more than it saves on tiny sets
            workers = 1
    _check_int("workers", workers, 1, 256)
    return workers


def _populate(tmp: Path, config: SyntheticConfig, workers: int) -> None:
    plan = plan_dataset(config)
    (tmp / "frames").mkdir()
    (tmp / "audio").mkdir()
    tasks = []
    for split in SPLITS:
        n = len(plan.clips[split])
        step = max(1, -(-n // (4 * workers)))
        tasks += [(str(tmp), config, split, s, min(s + step, n)) for s in range(0, n, step)]
    records: dict[str, dict[str, Any]] = {}
    if workers == 1:
        sampler = _sampler(config)
        for split in SPLITS:
            for c in plan.clips[split]:
                records[c.clip_id] = _write_clip(tmp, config, plan, sampler, c)
    else:
        import multiprocessing as mp

        # fork shares the imported modules (a spawned worker would re-import torch via baselines.data);
        # the workers use only numpy, Pillow and soundfile
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for chunk in pool.imap_unordered(_write_chunk, tasks):
                records.update(chunk)

    train = [c.clip_id for c in plan.clips["train"]]
    test = [c.clip_id for c in plan.clips["test"]]
    heard = set(plan.heard_classes)
    heard_train = [c.clip_id for c in plan.clips["train"] if c.class_index in heard]
    heard_test = [c.clip_id for c in plan.clips["test"] if c.class_index in heard]
    unheard_test = [c.clip_id for c in plan.clips["test"] if c.class_index not in heard]
    annotations = [{"file": i, "class": records[i]["class"], "bbox": records[i]["bbox"]} for i in test]
    _write_json(tmp / "vggss.json", annotations)
    _write_lines(tmp / "train.txt", train, "\n")
    _write_lines(tmp / "test.csv", test, "\r\n")
    _write_lines(tmp / "heard_train.txt", heard_train, "\n")
    _write_lines(tmp / "heard_test.csv", heard_test, "\n")
    _write_lines(tmp / "unheard_test.csv", unheard_test, "\n")
    _write_json(tmp / "objects.json", {i: records[i] for i in train + test})
    counts = {
        "train": len(train),
        "test": len(test),
        "heard_train": len(heard_train),
        "heard_test": len(heard_test),
        "unheard_test": len(unheard_test),
        "faulty_positives": len(plan.faulty_positives()),
    }
    _write_json(tmp / "meta.json", _meta(config, plan, counts), indent=1)


def generate(
    root: str | Path,
    config: SyntheticConfig,
    *,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset of ``config`` to directory ``root`` and return ``root``.

    The files are written into a temporary sibling directory which is renamed to
    ``root`` at the end, so ``root`` is either absent or complete. If ``root`` already
    holds the complete dataset of this config, nothing is written. An existing ``root``
    with anything else in it raises ``FileExistsError`` unless ``overwrite=True``
    (then it is replaced). ``workers`` processes render clips (default: 1 for < 200
    clips, else ``min(2, cpu_count)``); the bytes do not depend on it.
    """
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    root = Path(root)
    if is_complete(root, config):
        return root
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not the complete dataset of this config (hash {config_hash(config)}); "
            "pass overwrite=True to replace it"
        )
    workers = _resolve_workers(workers, config.num_train + config.num_test)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _populate(tmp, config, workers)
        if root.exists():
            if is_complete(root, config):  # another process finished first
                shutil.rmtree(tmp)
                return root
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            root.rename(trash)
            if trash.is_dir():
                shutil.rmtree(trash)
            else:
                trash.unlink()
        try:
            tmp.rename(root)
        except OSError:
            if is_complete(root, config):  # lost a race to an identical writer
                shutil.rmtree(tmp)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def default_cache_root() -> Path:
    """``$MARGINNCE_CACHE/synthetic`` if the variable is set, else ``~/.cache/marginnce-loss/synthetic``."""
    base = os.environ.get("MARGINNCE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "marginnce-loss") / "synthetic"


def ensure_dataset(
    root: str | Path | None = None,
    preset: str = "default",
    config: SyntheticConfig | None = None,
    *,
    workers: int | None = None,
    **overrides: Any,
) -> Path:
    """Path of the cached dataset ``<root>/<config_hash>``, generated first if absent.

    The config is ``config`` if given, else ``PRESETS[preset]``, with ``overrides``
    (field names of ``SyntheticConfig``) applied. ``root`` defaults to
    ``default_cache_root()``. Returns at once when the complete dataset is there.
    """
    if config is None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        config = PRESETS[preset]
    elif not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig or None, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    base = default_cache_root() if root is None else Path(root)
    return generate(base / config_hash(config), config, workers=workers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m baselines.data.synthetic",
        description="Write the synthetic audio-visual localisation dataset (VGG-SS layout).",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the hash-keyed cache)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--faulty-positive-rate", type=float, default=None)
    parser.add_argument("--snr-db", type=float, default=None)
    parser.add_argument("--centre-bias", type=float, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds something else")
    args = parser.parse_args(argv)
    changes = {
        k: v
        for k, v in {
            "seed": args.seed,
            "num_train": args.num_train,
            "num_test": args.num_test,
            "num_classes": args.num_classes,
            "faulty_positive_rate": args.faulty_positive_rate,
            "snr_db": args.snr_db,
            "centre_bias": args.centre_bias,
        }.items()
        if v is not None
    }
    config = PRESETS[args.preset].replace(**changes)
    t0 = time.perf_counter()
    if args.out is None:
        path = ensure_dataset(config=config, workers=args.workers)
    else:
        path = generate(args.out, config, workers=args.workers, overwrite=args.overwrite)
    print(f"{path} ({config.num_train} train / {config.num_test} test clips, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
