"""What each clip shows and says before anything is drawn: the class prototypes, the box-size sampler (VGG-SS box statistics through a Gaussian copula) and the per-clip plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._checks import check_int_in
from ..box_stats import QUANTILE_LEVELS, load_box_stats
from .config import _STREAM_PLAN, SHAPES, TEXTURES, SyntheticConfig, _stats_path


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


def _sampler(config: SyntheticConfig) -> BoxSizeSampler:
    return BoxSizeSampler(load_box_stats(_stats_path(config)))

