"""How big each study run is (:class:`StudyPreset`, :data:`PRESETS`; the paper's protocol
:data:`REAL_TRAIN`) and where a study's clips live (:class:`StudyData`, :func:`embedded_data`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.synthetic import PRESETS as DATA_PRESETS
from ..data.synthetic import ensure_dataset
from .paper import METHOD_NAMES, STUDIES

__all__ = ["StudyPreset", "PRESETS", "REAL_TRAIN", "EMBEDDED_TRAIN", "StudyData", "embedded_data", "SeedPlan",
           "seeds_of", "all_seeds"]

#: the seeds of each method's rows (``{"lvs": (0, 1, 2), "reference": (0, ..., 7)}``), or one sequence for all
SeedPlan = Sequence[int] | Mapping[str, Sequence[int]]


def seeds_of(seeds: SeedPlan, model: str) -> tuple[int, ...]:
    """The seeds of ``model``'s rows: ``seeds[model]`` for a per-method mapping, else ``seeds`` itself."""
    return tuple(seeds[model]) if isinstance(seeds, Mapping) else tuple(seeds)


def all_seeds(seeds: SeedPlan) -> tuple[int, ...]:
    """Every seed of the plan, sorted, once each."""
    values = [s for v in seeds.values() for s in v] if isinstance(seeds, Mapping) else list(seeds)
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class StudyPreset:
    """How big each run is. ``dataset`` names a :mod:`marginnce_kit.data.synthetic` preset (embedded data),
    ``dataset_overrides`` changes some of its fields (e.g. a larger test split); ``noise_rates`` and
    ``noise_margins`` span the noisy-correspondence study (:mod:`marginnce_kit.studies.noise`), trained
    with ``noise_seeds`` (``None``: ``seeds``). ``method_seeds`` gives a method (``"lvs"``, ``"ezvsl"``,
    ``"reference"``) its own seeds in Table 5 and its figures (the others, and Tables 6 and 4, use
    ``seeds``): the reference model carries the power target, so it can run more seeds than the
    baselines. ``--seeds`` overrides all."""

    dataset: str
    seeds: tuple[int, ...]
    studies: tuple[str, ...]
    train: dict[str, Any] = field(default_factory=dict)
    dataset_overrides: dict[str, Any] = field(default_factory=dict)
    noise_rates: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    noise_margins: tuple[float, ...] = (0.0, -0.1, -0.2, -0.3)
    noise_seeds: tuple[int, ...] | None = None
    method_seeds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.method_seeds) - set(METHOD_NAMES))
        if unknown:
            raise ValueError(f"method_seeds: expected keys among {sorted(METHOD_NAMES)}, got {unknown}")

    def seed_plan(self, models: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """The seeds of each of ``models``' rows in Table 5."""
        return {m: tuple(self.method_seeds.get(m, self.seeds)) for m in models}


# CPU-sized: the small backbone (stride 32, 7 x 7 maps), Adam at 1e-3, decoded clips cached in memory
_EMBEDDED_TRAIN = dict(backbone="small", width=16, dim=128, batch_size=64, lr=1e-3, weight_decay=1e-4, epochs=10,
                       cache=True)
# The embedded recipe, measured at m = 0 on the reference model (marginnce_kit.studies.recipe), applied to every method:
# - a cosine decay with one epoch of linear warm-up (31 steps of batch 64 on the 2,000 training clips); 4 seeds each
#   (results/recipe/recipes.md): the seed SD of cIoU fell from 5.21 to 2.99 points (AUC 2.42 -> 1.46) at the same
#   cost, the last epoch's loss drop from 0.077 to 0.024 (the constant-lr loss was still falling at epoch 10);
# - the patch8 encoder on 112-pixel images (a stride-16 image encoder: 7 x 7 maps, scored at 224 like every map);
#   8 seeds each (results/recipe-encoder/recipes.md): cIoU 37.20 +- 3.82 vs 35.96 +- 4.41 (AUC SD 1.69 vs 2.38), the
#   same last-epoch loss drop (0.026 vs 0.030), at 27-29 s a run against 104-112 s (two runs at a time on 2 cores;
#   the runs after the first two, which decode the clips; two of patch8's overlapped an unrelated process).
_EMBEDDED_RECIPE = dict(_EMBEDDED_TRAIN, lr_schedule="cosine", warmup_steps=31, backbone="patch8", image_size=112)
# 2,000 test clips instead of 500: evaluation is cheap and the clip-level part of every interval shrinks by 2x
_EMBEDDED_DATA = dict(num_test=2000)

# The reference model's Δ cIoU (m = -0.2 vs 0) carries the power target: a 95% half-width of about
# 1.96 * SD / sqrt(S) over S seeds, SD the per-seed SD of the paired difference. Under this recipe SD was 2.58
# over the first 38 seeds of the full preset's Table 5 (the m = 0 and -0.2 runs of one seed correlate at 0.83), so
# the default's 12 seeds expect 1.46 (target 2.0) and the full preset's 64 (fixed earlier, from the previous
# recipe's SD of 3.66) expect 0.63 (target 1.0); both counts fixed before their tables were made. Measured since:
# SD 3.11 over the default's 12 (half-width 1.73) and 2.88 over the full preset's 64 (0.76). The baselines run fewer seeds (wider intervals; 2-4 seeds are flagged).
PRESETS: dict[str, StudyPreset] = {
    "smoke": StudyPreset("smoke", (0,), ("table5",), dict(_EMBEDDED_RECIPE, epochs=4, batch_size=32, warmup_steps=12),
                         noise_rates=(0.0, 0.4), noise_margins=(0.0, -0.2)),
    # the main job: 34 runs (the reference model 12 seeds, LVS and EZ-VSL 2 each); asked for, Tables 6 and 4 and the
    # noise study use 4 seeds
    "default": StudyPreset("default", (0, 1, 2, 3), ("table5", "figures"), dict(_EMBEDDED_RECIPE),
                           dataset_overrides=dict(_EMBEDDED_DATA),
                           method_seeds={"lvs": (0, 1), "ezvsl": (0, 1), "reference": tuple(range(12))}),
    # Table 5 with the reference model at 64 seeds and the baselines at 10 (178 runs); Tables 6 and 4 at 10 seeds;
    # the noise study's 32 rows (2 methods x 4 rates x 4 margins) at 4 seeds (128 runs, 16 shared with Table 5)
    "full": StudyPreset("default", tuple(range(10)), STUDIES, dict(_EMBEDDED_RECIPE),
                        dataset_overrides=dict(_EMBEDDED_DATA), noise_seeds=(0, 1, 2, 3),
                        method_seeds={"reference": tuple(range(64))}),
}

# the paper's protocol (its implementation details): 20 epochs, Adam with weight decay, batch 128, lr 1e-4, ResNet-18
REAL_TRAIN = dict(backbone="resnet18", dim=512, epochs=20, batch_size=128, lr=1e-4, weight_decay=1e-4, cache=False)


@dataclass
class StudyData:
    """Where one study's clips live (real or embedded)."""

    train_root: str
    train_list: str
    test_root: str
    test_list: str
    annotations: str
    annotation_format: str = "vggss"
    heard_train_list: str = ""
    heard_test_list: str = ""
    unheard_test_list: str = ""
    source: str = "embedded"


def embedded_data(dataset_preset: str, **overrides: Any) -> StudyData:
    """The embedded dataset ``marginnce_kit.data.synthetic.PRESETS[dataset_preset]`` with ``overrides``
    (``SyntheticConfig`` fields, e.g. ``num_test=2000``), generated on first use."""
    root = ensure_dataset(config=DATA_PRESETS[dataset_preset].replace(**overrides))
    r = str(root)
    changed = "".join(f",{k}={v}" for k, v in sorted(overrides.items()))
    return StudyData(r, f"{r}/train.txt", r, f"{r}/test.csv", f"{r}/vggss.json", "vggss",
                     f"{r}/heard_train.txt", f"{r}/heard_test.csv", f"{r}/unheard_test.csv",
                     source=f"embedded:{dataset_preset}{changed}:{Path(r).name}")



EMBEDDED_TRAIN = _EMBEDDED_TRAIN  # the embedded training settings before the recipe (marginnce_kit.studies.recipe)
