"""The embedded synthetic dataset's cache, atomicity and API, and the VGG-SS box statistics (box_stats.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from marginnce_kit.data import synthetic as syn
from marginnce_kit.data.box_stats import (
    DEFAULT_STATS_PATH,
    QUANTILE_LEVELS,
    box_statistics,
    load_box_stats,
)
from marginnce_kit.data.synthetic import (
    PRESETS,
    EmbeddedConfig,
    config_hash,
    default_cache_root,
    ensure_dataset,
    generate,
    read_meta,
    render_audio,
    render_clip,
)

from .conftest import UPSTREAM_METADATA  # noqa: E402

META = UPSTREAM_METADATA / "ezvsl"
REAL_VGGSS = META / "vggss.json"

#: 100 train / 60 test clips: 20 faulty positives, 6 test clips per class; ~1 s to write.
TINY = EmbeddedConfig(num_train=100, num_test=60, num_val=0)
MINI = EmbeddedConfig(num_train=12, num_test=6, num_val=2)


# --------------------------------------------------------------------------- cache, atomicity, API


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ensure_dataset(tmp_path, config=MINI)
    assert path == tmp_path / config_hash(MINI) and syn.is_complete(path, MINI)
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*")}

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(syn.writer, "_populate", no_regeneration)
    assert ensure_dataset(tmp_path, config=MINI) == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == stamps
    # another config is another directory
    assert config_hash(MINI.replace(snr_db=5.0)) != config_hash(MINI)
    with pytest.raises(AssertionError, match="generated again"):
        ensure_dataset(tmp_path, config=MINI, snr_db=5.0)


def test_default_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGINNCE_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c" / "synthetic"
    path = ensure_dataset(preset="smoke", num_train=12, num_test=6)
    assert path == tmp_path / "c" / "synthetic" / config_hash(PRESETS["smoke"].replace(num_train=12, num_test=6))
    assert read_meta(path)["counts"]["train"] == 12
    monkeypatch.delenv("MARGINNCE_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "marginnce-loss" / "synthetic"


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_write = syn.writer._write_clip

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(syn.writer, "_write_clip", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "ds", MINI, workers=1)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary directory


def test_generate_refuses_a_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(root, MINI)
    assert (root / "notes.txt").exists()
    generate(root, MINI, overwrite=True)
    assert syn.is_complete(root, MINI) and not (root / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        generate(a_file, MINI)
    generate(a_file, MINI, overwrite=True)
    assert syn.is_complete(a_file, MINI)


@pytest.mark.parametrize(
    "changes, error, name",
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"num_train": 2.5}, TypeError, "num_train"),
        ({"seed": True}, TypeError, "seed"),
        ({"faulty_positive_rate": 1.0}, ValueError, "faulty_positive_rate"),
        ({"centre_bias": -1.0}, ValueError, "centre_bias"),
        ({"heard_fraction": 0.0}, ValueError, "heard_fraction"),
        ({"snr_db": float("nan")}, ValueError, "snr_db"),
        ({"min_distractors": 3, "max_distractors": 2}, ValueError, "max_distractors"),
        ({"box_stats": 3}, TypeError, "box_stats"),
        ({"colour": "red"}, TypeError, "colour"),
    ],
)
def test_config_validation(changes: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        EmbeddedConfig().replace(**changes)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="preset"):
        ensure_dataset(preset="huge")
    with pytest.raises(TypeError, match="config"):
        generate("/nonexistent", {"seed": 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        render_clip(MINI, "validation", 0)
    with pytest.raises(ValueError, match="index"):
        render_clip(MINI, "test", 6)
    with pytest.raises(ValueError, match="class_index"):
        render_audio(MINI, "train", 0, 10)


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--preset", "smoke", "--seed", "3", "--num-train", "12", "--num-test", "6"]
    assert syn.main(argv) == 0
    meta = read_meta(out)
    assert meta["seed"] == 3 and meta["counts"]["train"] == 12 and meta["counts"]["test"] == 6
    assert str(out) in capsys.readouterr().out


# --------------------------------------------------------------------------- box statistics


def test_box_statistics_by_hand() -> None:
    annotations = [
        {"file": "a", "class": "c", "bbox": [[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 0.4, 0.9]]},  # 2nd degenerate
        {"file": "b", "class": "c", "bbox": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]},
        {"file": "c", "class": "c", "bbox": [[-0.5, 0.0, 0.5, 0.25]]},  # clipped to [0, 0.5] x [0, 0.25]
    ]
    s = box_statistics(annotations)
    assert (s["num_clips"], s["num_boxes"], s["num_degenerate_boxes"]) == (3, 5, 1)
    assert s["boxes_per_clip_histogram"] == {"1": 2, "2": 1}
    # union areas 0.25, 0.5, 0.125; envelopes 0.5 x 0.5, 1 x 1, 0.5 x 0.25
    assert s["union_area_fraction"][0] == 0.125 and s["union_area_fraction"][-1] == 0.5
    assert s["union_area_fraction"][10] == 0.25
    assert s["envelope_width_fraction"][0] == 0.5 and s["envelope_width_fraction"][-1] == 1.0
    assert s["envelope_aspect_ratio"][0] == 1.0 and s["envelope_aspect_ratio"][-1] == 2.0
    assert s["box_width_fraction"] == list(np.round(np.quantile([0.5, 0.5, 0.5, 0.5], QUANTILE_LEVELS), 6))
    # ranks of widths (0.5, 1, 0.5) -> (1.5, 3, 1.5), of heights (0.5, 1, 0.25) -> (2, 3, 1): r = 1.5 / sqrt(3)
    assert s["envelope_width_height_spearman"] == pytest.approx(math.sqrt(3) / 2, abs=1e-6)


@pytest.mark.skipif(not REAL_VGGSS.is_file(), reason="real VGG-SS metadata not available")
def test_committed_statistics_are_the_scripts_output_on_real_vggss() -> None:
    annotations = json.loads(REAL_VGGSS.read_text(encoding="utf-8"))
    committed = load_box_stats(DEFAULT_STATS_PATH)
    fresh = box_statistics(annotations)
    assert {k: committed[k] for k in fresh} == fresh
    assert committed["num_clips"] == 5158 and committed["centre_prior"]["ciou"] == pytest.approx(34.0, abs=0.1)
