"""Checkpoint selection (best_val: the best epoch on a validation split, upstream EZ-VSL's best.pth without the
test set) and the mechanism's measures (marginnce_kit/training/diagnostics.py) in the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("soundfile")
pytest.importorskip("tqdm")

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit.data.synthetic import EmbeddedConfig, generate  # noqa: E402
from marginnce_kit.models import ModelConfig  # noqa: E402
from marginnce_kit.train import TrainConfig, load_checkpoint, train  # noqa: E402
from marginnce_kit.training.config import ConfigError  # noqa: E402
from marginnce_kit.training.diagnostics import ClipLabels, MechanismMeter, mechanism_terms  # noqa: E402
from marginnce_kit.training.loop import best_test, best_val_epoch  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_config  # noqa: E402


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> AVFixture:
    fx = make_av_dataset(tmp_path_factory.mktemp("av"), n_train=16, n_test=8)
    (fx.root / "val.csv").write_text("".join(f"{i}\n" for i in fx.test_ids[:4]))  # a split of its own file
    return fx


def test_best_val_epoch_ties_go_to_the_later_epoch() -> None:
    history = [{"epoch": 1, "val": {"ciou": 30.0}}, {"epoch": 2, "val": {"ciou": 40.0}},
               {"epoch": 3, "val": {"ciou": 40.0}}, {"epoch": 4, "val": {"ciou": 35.0}}]
    assert best_val_epoch(history) == 3  # upstream: if cIoU >= best_cIoU
    assert best_val_epoch([{"epoch": 1}]) is None
    evals = [{"epoch": e, "eval": {"ciou": c, "auc": 1.0, "mean_ciou": 2.0, "n": 5}} for e, c in ((1, 10), (2, 12))]
    assert best_test(evals) == {"epoch": 2, "optimistic": True, "ciou": 12, "auc": 1.0, "mean_ciou": 2.0, "n": 5}
    assert best_test(evals[:1] + [{"epoch": 2}, {"epoch": 3}]) is None  # not every epoch evaluated: no best_test
    last = {"ciou": 15, "auc": 1.0, "mean_ciou": 2.0, "n": 5}  # the final evaluation is the last epoch's
    assert best_test(evals + [{"epoch": 3}], last)["epoch"] == 3


def test_a_run_keeps_its_best_validation_epoch(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, epochs=3, val_list=str(fx.root / "val.csv"), eval_every=1)
    out = tmp_path / "run"
    final = train(config, out, progress=False, log_epochs=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert all(set(r["val"]) == {"ciou", "auc", "mean_ciou", "n"} and r["val"]["n"] == 4 for r in epochs)
    best = best_val_epoch(epochs)
    assert final["best_val"] == {"epoch": best, "val": epochs[best - 1]["val"]}
    state = load_checkpoint(out / "best_val.pt")
    assert state["selection"] == "best_val" and state["epoch"] == best and "optimizer" not in state
    assert set(final["eval_best_val"]) >= {"ciou", "auc", "per_clip"}
    if best == 3:
        assert final["eval_best_val"] == final["eval"]
    assert final["best_test"]["optimistic"] is True  # eval_every=1: upstream's protocol, flagged
    # evaluate says which checkpoint it scored
    report = tmp_path / "report.json"
    assert evaluate_cli.main(["--checkpoint", str(out / "best_val.pt"), "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["checkpoint"] == "best_val" and result["epoch"] == best
    assert result["eval"]["ciou"] == pytest.approx(final["eval_best_val"]["ciou"])


def test_the_validation_split_must_not_be_the_test_split(fx: AVFixture) -> None:
    with pytest.raises(ConfigError, match="val_list: expected a validation split other than the test split"):
        train_config(fx, val_list=str(fx.test_list))
    with pytest.raises(ConfigError, match="val_list: validation also needs val_root"):
        TrainConfig(train_root="r", train_list="l", val_list="v.csv")


def test_mechanism_meter_weights_and_medians() -> None:
    labels = ClipLabels({"a": 0, "b": 0, "c": 1, "d": 2}, {"a": 0, "b": 5, "c": 0, "d": 2}, frozenset({"b"}))
    s = torch.tensor([[0.9, 0.1, 0.5, 0.2],   # a's audio class 0: c's audio is class 0 too (a same-class negative)
                      [0.3, 0.2, 0.6, 0.1],   # b is faulty (its audio is class 5)
                      [0.4, 0.0, 0.8, 0.3],
                      [0.1, 0.2, 0.3, 0.7]])
    w = torch.tensor([0.1, 0.7, 0.2, 0.0])
    meter = MechanismMeter(labels)
    meter.update(["a", "b", "c", "d"], s, w)
    out = meter.compute()
    assert out["faulty_weight_share"] == pytest.approx(0.7)
    assert out["faulty_anchor_share"] == pytest.approx(0.25)
    assert out["faulty_weight_ratio"] == pytest.approx(2.8)
    # same-class pairs (image class of i = audio class of j, i != j): (a, c) and (b, a), (b, c)
    assert out["same_class_negatives_per_anchor"] == pytest.approx(3 / 4)
    assert out["median_s_pos"] == pytest.approx(0.75)
    assert out["median_s_same_class"] == pytest.approx(0.5)


@pytest.mark.parametrize("model", ["reference", "ezvsl", "lvs"])
def test_mechanism_weight_is_one_minus_the_positives_probability(model: str) -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, 3, 3), dim=1)
    aud = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    config = ModelConfig(model=model, margin=-0.2, backbone="small")
    s, w = mechanism_terms(config, img, aud)
    assert s.shape == (5, 5) and w.shape == (5,)
    assert bool(((w > 0) & (w < 1)).all())
    loose, _ = mechanism_terms(ModelConfig(model=model, margin=0.0, backbone="small"), img, aud)[0], None
    weaker = mechanism_terms(ModelConfig(model=model, margin=-0.5, backbone="small"), img, aud)[1]
    assert bool((weaker < w).all())  # a more negative margin raises p_ii, so every anchor counts less
    assert torch.equal(loose, s)  # the similarity does not depend on the margin


def test_training_on_embedded_data_records_the_mechanism(tmp_path: Path) -> None:
    root = generate(tmp_path / "emb", EmbeddedConfig(num_classes=4, num_train=48, num_test=8, num_val=4,
                                                     faulty_positive_rate=0.25, image_size=64), workers=1)
    config = TrainConfig(model="reference", margin=-0.2, backbone="small", width=8, dim=16, epochs=1, batch_size=8,
                         lr=1e-3, train_root=str(root), train_list=str(root / "train.txt"), device="cpu", workers=0)
    out = tmp_path / "run"
    train(config, out, progress=False, log_epochs=False)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    m = record["mechanism"]
    assert m["faulty_anchor_share"] == pytest.approx(0.25, abs=0.1)
    assert 0.0 < m["faulty_weight_share"] < 1.0 and m["faulty_weight_ratio"] > 0
    assert m["median_s_pos"] is not None and m["same_class_negatives_per_anchor"] > 0
    # a plain folder (no embedded labels) records none
    labels = ClipLabels.from_embedded(root)
    assert labels is not None and len(labels.faulty) == 12


def test_selection_and_the_mechanism_do_not_change_what_is_trained(tmp_path: Path) -> None:
    """Scoring a validation split every epoch and measuring the mechanism leave the trained weights bit for bit
    as a run without them (no random draw, no state of the training is touched)."""
    root = generate(tmp_path / "emb", EmbeddedConfig(num_classes=4, num_train=32, num_test=8, num_val=8,
                                                     faulty_positive_rate=0.25, image_size=64), workers=1)
    base = TrainConfig(model="reference", margin=-0.2, backbone="small", width=8, dim=16, epochs=2, batch_size=8,
                       lr=1e-3, train_root=str(root), train_list=str(root / "train.txt"), device="cpu", workers=0)
    train(base, tmp_path / "plain", progress=False, log_epochs=False, labels=False)
    watched = base.replace(val_root=str(root), val_list=str(root / "val.csv"), val_annotations=str(root / "val.json"))
    train(watched, tmp_path / "watched", progress=False, log_epochs=False)
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["model"]
    other = load_checkpoint(tmp_path / "watched" / "checkpoint.pt")
    assert "mechanism" in other["history"][-1] and "val" in other["history"][-1]
    assert all(torch.equal(plain[k], other["model"][k]) for k in plain)
