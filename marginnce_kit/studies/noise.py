"""The noisy-correspondence study (``python -m marginnce_kit.table5 --studies noise``): exploratory.

The paper motivates a negative margin by noisy correspondences: training pairs whose audio does not
belong to their frame (faulty positives). This study tests the claim directly on the embedded data,
where the faulty-positive rate is a knob of the generator (``SyntheticConfig.faulty_positive_rate``:
that fraction of training clips carries the audio of a clip of another class): the reference model
and EZ-VSL are trained at each rate of ``StudyPreset.noise_rates`` with each margin of
``StudyPreset.noise_margins``, every run scored on the one clean test split of the study's dataset
(the test split is clean at every rate), so every row is on the same clips, and each margin's Δ
against m = 0 at the same rate carries its 95% paired-bootstrap interval.

Exploratory throughout: its cells run few seeds (``StudyPreset.noise_seeds``, 4 in the full preset), so a
resolved cell is a pointer for a study with a plan and more seeds (the faulty-negative study,
:mod:`.negatives`, varies the faulty-positive rate at 16 seeds); ``resolved_holm`` is Holm-adjusted over the
study's cells all the same.

Writes ``noise.json`` (``rows`` with ``method``, ``faulty_positive_rate``, ``margin``, the metrics and
the Δ fields; ``"exploratory": true``), ``noise.md`` and ``noise.png`` (Δ cIoU against the rate, a line per margin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.synthetic import PRESETS as DATA_PRESETS
from .figures import plot_noise
from .paper import METHOD_NAMES
from .presets import StudyPreset, embedded_data
from .runner import Runner
from .tables import (
    add_margin_effects,
    add_selection,
    apply_holm,
    bound_table_rows,
    markdown_tables,
    same_clips,
    table_row,
    write_study,
)

__all__ = ["NOISE_METHODS", "NoisePlan", "plan", "study_noise"]

NOISE_METHODS: tuple[str, ...] = ("reference", "ezvsl")


@dataclass
class NoisePlan:
    """The runners (one per faulty-positive rate: that rate's training split, the study's test split)
    and every training run of the study."""

    rates: tuple[float, ...]
    margins: tuple[float, ...]
    runners: dict[float, Runner] = field(default_factory=dict)
    tags: dict[float, str] = field(default_factory=dict)
    jobs: list[tuple[Runner, tuple[Any, ...]]] = field(default_factory=list)


def plan(runner: Runner, preset: StudyPreset, seeds: Sequence[int]) -> NoisePlan:
    """Build the datasets (generated on first use) and list the runs; a rate equal to the study
    dataset's own reuses the main runner, so its runs are shared with Tables 5 and 6."""
    own_rate = DATA_PRESETS[preset.dataset].replace(**preset.dataset_overrides).faulty_positive_rate
    p = NoisePlan(tuple(preset.noise_rates), tuple(preset.noise_margins))
    test = runner.data.test_list
    for rate in p.rates:
        if abs(rate - own_rate) < 1e-12:
            rn, tag = runner, ""
        else:
            d = embedded_data(preset.dataset, **dict(preset.dataset_overrides, faulty_positive_rate=rate))
            data = replace(runner.data, train_root=d.train_root, train_list=d.train_list,
                           source=f"{runner.data.source}; train: {d.source}")
            rn = Runner(runner.out, data, runner.train_kwargs, runner.device, runner.workers, runner.progress,
                        runner.tensorboard)
            tag = f"fp{rate:.1f}_"
        p.runners[rate], p.tags[rate] = rn, tag
        p.jobs += [(rn, (m, mg, s, rn.data.train_list, (test,), tag))
                   for m in NOISE_METHODS for mg in p.margins for s in seeds]
    return p


def study_noise(runner: Runner, p: NoisePlan, seeds: Sequence[int], meta: dict[str, Any]) -> dict[str, Any]:
    test = runner.data.test_list
    keys = [(m, rate, mg) for m in NOISE_METHODS for rate in p.rates for mg in p.margins]
    results = [[p.runners[rate].run(m, mg, s, p.runners[rate].data.train_list, [test], p.tags[rate])
                for s in seeds] for m, rate, mg in keys]
    evals = [[r[test] for r in row] for row in results]
    ids, excluded = same_clips(runner, test, [e for row in evals for e in row])
    rows = [table_row(METHOD_NAMES[m], mg, ev, None, seeds, ids, method_key=f"{m}:{rate}", faulty_positive_rate=rate,
                      checkpoint="last", exploratory=True)
            for (m, rate, mg), ev in zip(keys, evals)]
    add_margin_effects(rows, evals, ids)
    if runner.has_val:
        add_selection(rows, results, test, ids)
    apply_holm(rows)
    rows += bound_table_rows(runner.bound_rows(test), ids, faulty_positive_rate=None)
    payload = dict(meta, study="noise", exploratory=True, seeds=list(seeds), rows=rows, n_test=len(ids),
                   excluded=excluded, faulty_positive_rates=list(p.rates), margins=list(p.margins))
    note = (f"EXPLORATORY ({len(seeds)} seeds per cell, no plan committed before the runs: every resolved cell is a "
            f"pointer, not a finding). Data: {runner.data.source}, training split regenerated at each faulty-positive "
            f"rate (that fraction of training clips carries another class's audio); every run scored on the same "
            f"clean test clips, n = {len(ids)}; seeds {list(seeds)}. The paper has no such table (its claim: a "
            f"negative margin alleviates noisy correspondences).")
    write_study(runner.out, "noise", payload,
                markdown_tables("Exploratory: noisy correspondences, margin effect against the faulty-positive rate",
                                rows, note, extra_column=("faulty-positive rate", "faulty_positive_rate")))
    plot_noise(rows, runner.out / "noise.png")
    return payload
