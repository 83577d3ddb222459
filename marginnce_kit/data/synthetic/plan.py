"""What each clip shows and says before anything is drawn: the class prototypes, the box-size sampler (VGG-SS box
statistics through a Gaussian copula) and the per-clip plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._checks import check_int_in
from ..box_stats import QUANTILE_LEVELS, load_box_stats
from .config import (
    _MIN_BOX_PX,
    _SPLIT_CODE,
    _STREAM_IMAGE,
    _STREAM_INSTANCE,
    _STREAM_NOISY,
    _STREAM_PLAN,
    SHAPES,
    TEXTURES,
    EmbeddedConfig,
    _stats_path,
)


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
    noise_center_hz: float
    noise_bandwidth_hz: float
    noise_level: float


def class_prototypes(num_classes: int) -> tuple[ClassPrototype, ...]:
    """The ``num_classes`` class prototypes.

    For class ``k`` and ``s = k / (K - 1)``: ``f0 = 140 * 10 ** s`` Hz,
    ``num_harmonics = 1 + (2k mod 5)``, ``harmonic_decay = 0.35 + 0.5 ((3k mod 4) / 3)``,
    ``am_rate = 2 + 10 ((3k mod K) / (K - 1))`` Hz, ``fm_rate = 4 + (k mod 3)`` Hz,
    ``fm_depth = 0.01 (7k mod 4)`` (relative), noise band center
    ``2000 + 4500 ((7k mod K) / (K - 1))`` Hz, bandwidth 500 Hz, level 0.5.
    """
    check_int_in("num_classes", num_classes, 2, 1000)
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
                noise_center_hz=2000.0 + 4500.0 * ((7 * k) % k_all) / (k_all - 1),
                noise_bandwidth_hz=500.0,
                noise_level=0.5,
            )
        )
    return tuple(out)




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




def _box_position(rng: np.random.Generator, size_px: int, frame: int, centre_bias: float, n: int = 1) -> np.ndarray:
    """Top-left pixel(s) of a box of ``size_px`` along one axis: center ``0.5 + t (1 - w) / 2``,
    ``t = sign(u)|u|^g``."""
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


def _image_rng(config: EmbeddedConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _STREAM_IMAGE, _SPLIT_CODE[split], index])


def _sounding_box(config: EmbeddedConfig, sampler: BoxSizeSampler,
                  rng: np.random.Generator) -> tuple[int, int, int, int]:
    size = config.image_size
    wp, hp = _box_size_px(sampler, rng, size)
    x0 = int(_box_position(rng, wp, size, config.centre_bias)[0])
    y0 = int(_box_position(rng, hp, size, config.centre_bias)[0])
    return x0, y0, x0 + wp, y0 + hp


def _distractor_classes(config: EmbeddedConfig, sampler: BoxSizeSampler, rng: np.random.Generator,
                        class_index: int, group: tuple[int, ...]) -> tuple[tuple[int, int, int, int], list[int]]:
    """The sounding box and the distractor classes of a clip, the first draws of its image stream ``rng``."""
    box = _sounding_box(config, sampler, rng)  # drawn first: it does not depend on anything else
    pool = [c for c in group if c != class_index]
    n_dist = int(rng.integers(config.min_distractors, config.max_distractors + 1))
    n_dist = min(n_dist, len(pool))
    return box, (rng.choice(pool, size=n_dist, replace=False).tolist() if n_dist else [])


def on_screen_classes(config: EmbeddedConfig, split: str, index: int, class_index: int,
                      group: tuple[int, ...], sampler: BoxSizeSampler | None = None) -> set[int]:
    """The classes a clip's frame shows: its own and its distractors' (replays the image stream's first draws)."""
    sampler = _sampler(config) if sampler is None else sampler
    _, dist = _distractor_classes(config, sampler, _image_rng(config, split, index), class_index, group)
    return {class_index, *dist}


def instance_latent(config: EmbeddedConfig, split: str, index: int) -> float:
    """The clip's latent ``z ~ U(-1, 1)`` of the audio-visual coupling (``EmbeddedConfig.instance_coupling``)."""
    return float(np.random.default_rng([config.seed, _STREAM_INSTANCE, _SPLIT_CODE[split], index]).uniform(-1, 1))


@dataclass(frozen=True)
class ClipPlan:
    """What is decided for one clip before rendering (from the plan stream of the seed)."""

    clip_id: str
    split: str
    index: int
    class_index: int
    audio_source: int  # index (same split) of the clip whose audio this clip carries (== index unless faulty)
    group: tuple[int, ...]  # classes of the clip's heard / unheard group (distractor pool)
    silent: bool = False  # the sounding object makes no sound: the audio is the background noise alone
    offscreen_class: int | None = None  # a class the frame does not show, heard beside the clip's own sound


@dataclass(frozen=True)
class DatasetPlan:
    """Class assignment, open-set split and faulty positives of a config."""

    config: EmbeddedConfig
    classes: tuple[ClassPrototype, ...]
    heard_classes: tuple[int, ...]
    unheard_classes: tuple[int, ...]
    clips: dict[str, tuple[ClipPlan, ...]]  # split -> clips in index order

    def faulty_positives(self) -> dict[str, str]:
        """``{training clip id: id of the clip whose audio it carries}`` for the faulty pairs."""
        train = self.clips["train"]
        return {c.clip_id: train[c.audio_source].clip_id for c in train if c.audio_source != c.index}

    def audio_class(self, clip: ClipPlan) -> int:
        """The class of the sound a clip carries (its audio source's class), -1 for a silent clip."""
        return -1 if clip.silent else self.clips[clip.split][clip.audio_source].class_index


def _clip_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def plan_dataset(config: EmbeddedConfig) -> DatasetPlan:
    """Deterministic plan: balanced classes per split (``arange(n) mod K``, shuffled), heard classes
    (a seeded choice of ``config.num_heard``), the faulty-positive sources of the training split and, on their
    own stream, its off-screen and silent clips (drawn from the clips that are not faulty)."""
    if not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig, got {type(config).__name__}")
    rng = np.random.default_rng([config.seed, _STREAM_PLAN])
    k = config.num_classes
    perm = rng.permutation(k)
    heard = tuple(sorted(int(c) for c in perm[: config.num_heard]))
    unheard = tuple(sorted(int(c) for c in perm[config.num_heard :]))
    group_of = {c: heard for c in heard} | {c: unheard for c in unheard}

    clips: dict[str, tuple[ClipPlan, ...]] = {}
    sampler = _sampler(config) if config.faulty_source == "offscreen" or config.noisy_train else None
    for split, n in (("train", config.num_train), ("test", config.num_test), ("val", config.num_val)):
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
                if config.faulty_source == "offscreen":  # not a class the frame shows (its distractors)
                    assert sampler is not None
                    shown = on_screen_classes(config, split, int(i), int(labels[i]), group_of[int(labels[i])],
                                              sampler)
                    pool = pool[~np.isin(labels[pool], list(shown))]
                if pool.size == 0:
                    raise ValueError(
                        f"faulty_positive_rate={config.faulty_positive_rate} needs training clips of at least "
                        f"two classes, got num_train={n}"
                    )
                sources[i] = int(pool[rng.integers(pool.size)])
        silent, offscreen = np.zeros(n, dtype=bool), np.full(n, -1)
        if split == "train" and config.noisy_train:
            silent, offscreen = _noisy_clips(config, labels, sources, group_of, sampler)
        clips[split] = tuple(
            ClipPlan(
                clip_id=_clip_id(split, i),
                split=split,
                index=i,
                class_index=int(labels[i]),
                audio_source=int(sources[i]),
                group=group_of[int(labels[i])],
                silent=bool(silent[i]),
                offscreen_class=None if offscreen[i] < 0 else int(offscreen[i]),
            )
            for i in range(n)
        )
    return DatasetPlan(config, class_prototypes(k), heard, unheard, clips)


def _noisy_clips(config: EmbeddedConfig, labels: np.ndarray, sources: np.ndarray, group_of: dict[int, tuple[int, ...]],
                 sampler: BoxSizeSampler | None) -> tuple[np.ndarray, np.ndarray]:
    """The silent clips (bool ``[n]``) and the off-screen class of each clip (``-1``: none), on their own stream:
    ``round(offscreen_rate * n)`` and ``round(silent_rate * n)`` of the clips that are not faulty."""
    n = labels.size
    rng = np.random.default_rng([config.seed, _STREAM_NOISY])
    clean = np.flatnonzero(sources == np.arange(n))
    order = rng.permutation(clean)
    n_off, n_silent = int(round(config.offscreen_rate * n)), int(round(config.silent_rate * n))
    if n_off + n_silent > order.size:
        raise ValueError(f"offscreen_rate + silent_rate: expected at most the {order.size} training clips that are "
                         f"not faulty, got {n_off} + {n_silent}")
    silent = np.zeros(n, dtype=bool)
    silent[order[n_off:n_off + n_silent]] = True
    offscreen = np.full(n, -1)
    assert sampler is not None
    for i in np.sort(order[:n_off]):
        c = int(labels[i])
        shown = on_screen_classes(config, "train", int(i), c, group_of[c], sampler)
        pool = [g for g in group_of[c] if g not in shown] or [g for g in range(config.num_classes) if g not in shown]
        offscreen[i] = int(pool[int(rng.integers(len(pool)))])
    return silent, offscreen


def _sampler(config: EmbeddedConfig) -> BoxSizeSampler:
    return BoxSizeSampler(load_box_stats(_stats_path(config)))

