"""The trainer end to end on a tiny dataset in the real on-disk layout (tests/fixtures.py): CLI train -> evaluate,
resume = uninterrupted run (bitwise), resuming an older checkpoint, determinism, broken-data accounting, CUDA autocast
and SyncBatchNorm, a non-finite loss, the curves, TensorBoard scalars and provenance. CPU, small backbone (width 8),
batch 4. The configuration, the ImageNet weights and the global-batch sampler are in test_train_config.py."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")
pytest.importorskip("tqdm")

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.data import DataError  # noqa: E402
from marginnce_kit.models import WEIGHT_DECAY  # noqa: E402
from marginnce_kit.train import (  # noqa: E402
    TrainConfig,
    build_train_model,
    effective_config,
    load_checkpoint,
    train,
)

from .fixtures import AVFixture, break_audio, break_frame, make_av_dataset, train_argv, train_config

METRIC_KEYS = {"ciou", "auc", "mean_ciou", "n", "data_failures", "per_clip", "failed"}
PROVENANCE_KEYS = {"marginnce_loss", "git_commit", "git_dirty", "python", "torch", "torchvision", "cuda", "cudnn", "device", "world_size",
                   "libraries", "not_applied"}


def _effective(config: TrainConfig) -> dict:
    return asdict(effective_config(config)[0])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_metrics(e: dict[str, float], n: int) -> None:
    assert set(e) == METRIC_KEYS
    assert e["n"] == n and e["data_failures"] == 0
    for key in ("ciou", "auc", "mean_ciou"):
        assert 0.0 <= e[key] <= 100.0
    assert e["mean_ciou"] > 0.0  # masks of half the frame or more: some of the 8 boxes are hit


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]), (i, k)


# --------------------------------------------------------------------------- end to end


def test_cli_train_then_evaluate(train_fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert train_cli.main(train_argv(train_fx, out, "--eval-every", "1")) == 0
    captured = capsys.readouterr().out
    assert "reference margin -0.20: cIoU" in captured
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "metrics.jsonl", "final.json",
                                               "curves.png"}

    saved = json.loads((out / "config.json").read_text())
    config = TrainConfig.from_dict(saved)
    # the CLI maps every flag onto the config; recorded as it applies on the CPU (no autocast, no SyncBatchNorm)
    assert config == replace(train_config(train_fx, eval_every=1), amp=False, sync_batchnorm=False,
                             weight_decay=WEIGHT_DECAY["reference"])  # --weight-decay auto: the method's
    assert set(saved["provenance"]) == PROVENANCE_KEYS
    assert saved["provenance"]["not_applied"] == {"amp": True, "sync_batchnorm": True}
    assert saved["provenance"]["torch"] == torch.__version__ and saved["provenance"]["device"] == "cpu"
    from importlib.metadata import version

    assert saved["provenance"]["libraries"]["pillow"] == version("pillow")
    assert set(saved["provenance"]["libraries"]) == {"numpy", "pillow", "soundfile", "av", "scipy"}
    state = load_checkpoint(out / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "epoch", "config", "history", "selection", "marginnce_loss"} and state["selection"] == "last"
    assert state["epoch"] == 2 and state["config"] == asdict(config)
    # a checkpoint holds tensors and plain containers only: loadable without unpickling code
    plain = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    _assert_same_state(plain["model"], state["model"])
    # load_model: the checkpoint's model, built from its config, in eval mode, holding its weights
    from marginnce_kit.train import load_model

    model, loaded_config, loaded = load_model(out / "checkpoint.pt")
    assert loaded_config == config and not model.training and loaded["epoch"] == 2
    _assert_same_state(model.state_dict(), state["model"])

    records = _records(out)
    assert [r.get("epoch") for r in records] == [1, 2, None]
    assert records[:2] == state["history"]
    for r in records[:2]:
        assert r["steps"] == 4 and r["skipped_batches"] == 0 and r["data_failures"] == 0  # 16 clips / batch 4
        assert r["failed_clips"] == {} and r["lr"] == 1e-3
        assert math.isfinite(r["loss"]) and r["loss"] > 0
    _check_metrics(records[0]["eval"], 8)  # --eval-every 1: after epoch 1 (the last epoch has the final one)
    assert "eval" not in records[1]
    final = json.loads((out / "final.json").read_text())
    assert final["config"] == asdict(config) and final["epochs_completed"] == 2
    assert final["provenance"] == saved["provenance"]
    assert final["failed_clips"] == {"train": {}, "test": {}}
    _check_metrics(final["eval"], 8)
    assert records[2] == {"final_eval": final["eval"]}
    # one line per epoch on stdout (the CLI ran with --no-progress), with the evaluation when one ran
    lines = [line for line in captured.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and "eval: cIoU" in lines[0]
    assert "lr 0.001" in lines[1] and "failed clips 0" in lines[1] and "eval" not in lines[1]

    # the evaluator CLI on the checkpoint: the same numbers, beside the two reference rows
    result_path = tmp_path / "eval.json"
    assert evaluate_cli.main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(result_path)]) == 0
    assert "center prior" in capsys.readouterr().out
    result = json.loads(result_path.read_text())
    assert result["model"] == "reference" and result["margin"] == -0.2 and result["epoch"] == 2
    assert result["eval"] == final["eval"]
    for row in ("center prior", "ceiling"):
        assert result[row]["n"] == 8 and 0.0 <= result[row]["ciou"] <= 100.0
    assert result["ceiling"]["mean_ciou"] >= final["eval"]["mean_ciou"]


def test_resume_equals_uninterrupted_run(train_fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(train_fx, model="ezvsl", margin=-0.1)
    whole = train(config, tmp_path / "whole", progress=False)

    part = tmp_path / "part"
    first = train(config, part, progress=False, stop_after_epoch=1)
    assert first == {"config": _effective(config), "epochs_completed": 1, "stopped": True}
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1 and not (part / "final.json").exists()
    # from the command line, with DataLoader worker processes: crops and flips do not depend on which
    # process decodes a clip
    assert train_cli.main(train_argv(train_fx, part, "--model", "ezvsl", "--margin", "-0.1", "--resume", "--workers", "2")) == 0
    resumed = json.loads((part / "final.json").read_text())
    assert resumed["config"] == _effective(replace(config, workers=2))

    assert resumed["eval"] == whole["eval"] and resumed["epochs_completed"] == 2
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    _assert_same_state(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(tmp_path / "whole"))
    # stopping after the last epoch or before the checkpoint's epoch trains nothing more
    assert train(config, part, resume=True, progress=False, stop_after_epoch=1)["epochs_completed"] == 2
    # --stop-after-epoch on the command line
    assert train_cli.main(train_argv(train_fx, tmp_path / "cli", "--stop-after-epoch", "1", "--epochs", "3")) == 0
    assert load_checkpoint(tmp_path / "cli" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "cli" / "final.json").exists()
    with pytest.raises(ValueError, match=r"resume: the checkpoint's config differs.*'margin': \(-0.1, -0.2\)"):
        train(replace(config, margin=-0.2), part, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="resume: expected a checkpoint"):
        train(config, tmp_path / "nothing", resume=True, progress=False)


def test_identical_runs_give_identical_weights(train_fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(train_fx, model="lvs", epochs=1, test_list="", dim=16)
    rng_before = torch.get_rng_state()
    train(config, tmp_path / "a", progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone
    torch.manual_seed(12345)  # nor does the trainer depend on it
    train(config, tmp_path / "b", progress=False)
    train(replace(config, seed=1), tmp_path / "c", progress=False)
    a, b, c = (load_checkpoint(tmp_path / n / "checkpoint.pt")["model"] for n in "abc")
    _assert_same_state(a, b)
    assert not torch.equal(a["audnet.0.0.weight"], c["audnet.0.0.weight"])
    init = build_train_model(config).state_dict()
    assert not torch.equal(a["audnet.0.0.weight"], init["audnet.0.0.weight"])  # it trained


def test_resume_from_an_older_checkpoint(train_fx: AVFixture, tmp_path: Path) -> None:
    """A checkpoint written before the effective settings were recorded (amp / sync_batchnorm true on
    CPU, no visual_weights field) resumes: configs are compared as they apply on the device."""
    config = train_config(train_fx, test_list="")
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after_epoch=1)
    state = load_checkpoint(out / "checkpoint.pt")
    older = {k: v for k, v in state["config"].items() if k != "visual_weights"}
    torch.save({**state, "config": {**older, "amp": True, "sync_batchnorm": True}}, out / "checkpoint.pt")
    assert train(config, out, resume=True, progress=False)["epochs_completed"] == 2


# --------------------------------------------------------------------------- broken data


def test_missing_clips_past_the_threshold_stop_before_training(tmp_path: Path) -> None:
    fx = make_av_dataset(tmp_path / "data", n_train=8, n_test=0)
    fx.audio(fx.train_ids[2]).unlink()
    fx.frame(fx.train_ids[5]).unlink()
    config = train_config(fx, test_list="", max_failures=1)
    with pytest.raises(DataError, match=rf"(?s)2 of 8 clips.*{fx.train_ids[2]}: missing audio.*{fx.train_ids[5]}: missing frame"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_broken_clips_are_counted_and_stop_the_run_past_the_threshold(tmp_path: Path) -> None:
    fx = make_av_dataset(tmp_path / "data", n_train=8, n_test=0)
    break_frame(fx, fx.train_ids[1])
    break_audio(fx, fx.train_ids[6])
    config = train_config(fx, test_list="", epochs=1, max_failures=2)
    final = train(config, tmp_path / "ok", progress=False)  # two allowed
    assert final["epochs_completed"] == 1
    (record,) = _records(tmp_path / "ok")
    assert record["data_failures"] == 2 and record["steps"] == 2  # each batch of 4 keeps >= 2 good clips
    # which clips, and why: in every epoch's record and in final.json
    assert set(record["failed_clips"]) == {fx.train_ids[1], fx.train_ids[6]}
    assert record["failed_clips"][fx.train_ids[1]].startswith("frame does not decode: UnidentifiedImageError")
    assert json.loads((tmp_path / "ok" / "final.json").read_text())["failed_clips"] == {"train": record["failed_clips"]}
    # one allowed: the run stops inside the first epoch, naming both clips, before any checkpoint
    ids = rf"(?=.*{fx.train_ids[1]}: frame does not decode: UnidentifiedImageError)(?=.*{fx.train_ids[6]}: audio does not decode: )"
    with pytest.raises(DataError, match=rf"(?s)2 of 8 clips missing or broken \(allowed: 1\){ids}"):
        train(replace(config, max_failures=1), tmp_path / "stop", progress=False)
    assert not (tmp_path / "stop" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_training_and_sync_batchnorm(train_fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(train_fx, device="cuda", epochs=1, amp=True)
    final = train(config, tmp_path / "cuda", progress=False)
    _check_metrics(final["eval"], 8)
    (record,) = [r for r in _records(tmp_path / "cuda") if "epoch" in r]
    assert math.isfinite(record["loss"]) and record["steps"] == 4
    state = load_checkpoint(tmp_path / "cuda" / "checkpoint.pt")  # mapped to the CPU
    assert all(v.device.type == "cpu" for v in state["model"].values())
    cpu_model = build_train_model(config)
    cpu_model.load_state_dict(state["model"])
    # under DDP on CUDA the BatchNorm layers become SyncBatchNorm with the same state-dict keys
    synced = build_train_model(config, distributed=True, device="cuda")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert synced.state_dict().keys() == cpu_model.state_dict().keys()
    plain = build_train_model(replace(config, sync_batchnorm=False), distributed=True, device="cuda")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())


# --------------------------------------------------------------------------- non-finite loss


class _Poisoned(torch.utils.data.Dataset):
    """``base`` with one clip's image made NaN from epoch ``from_epoch`` on (a sample that passed every
    load-time check but poisons the forward pass)."""

    def __init__(self, base, clip_id: str, from_epoch: int) -> None:
        self.base, self.clip_id, self.from_epoch, self.epoch = base, clip_id, from_epoch, 0
        self.failures = base.failures

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch, seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self.base[i]
        if isinstance(item, dict) and "frame" in item:  # the trainer's uint8 frames: normalise here, to poison
            from marginnce_kit.data import normalize_frames

            item = {**{k: v for k, v in item.items() if k != "frame"}, "image": normalize_frames(item["frame"])}
        if isinstance(item, dict) and item["id"] == self.clip_id and self.epoch >= self.from_epoch:
            item = {**item, "image": torch.full_like(item["image"], float("nan"))}
        return item


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(train_fx: AVFixture, tmp_path: Path) -> None:
    from marginnce_kit.train import NonFiniteLossError, build_train_set

    config = train_config(train_fx, epochs=3)
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after_epoch=1)
    ckpt, log = (out / "checkpoint.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()
    poison = train_fx.train_ids[5]
    data = _Poisoned(build_train_set(config), poison, from_epoch=1)  # epoch index 1 = the second epoch
    with pytest.raises(NonFiniteLossError, match=rf"epoch 2, step \d+: the loss is nan on the batch of clips "
                                                 rf"\[.*'{poison}'.*\]; the checkpoint of epoch 1 .* is kept"):
        train(config, out, resume=True, progress=False, train_set=data)
    assert (out / "checkpoint.pt").read_bytes() == ckpt  # byte for byte
    assert (out / "metrics.jsonl").read_bytes() == log and not (out / "final.json").exists()
    # in the first epoch of a fresh run: no checkpoint at all
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        train(config, tmp_path / "fresh", progress=False, train_set=_Poisoned(build_train_set(config), poison, 0))
    assert not (tmp_path / "fresh" / "checkpoint.pt").exists()


def test_non_finite_weights_are_found() -> None:
    from marginnce_kit.training.loop import _nonfinite_tensors

    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf")]), "n": torch.tensor(3),
             "c": torch.tensor([float("nan")], dtype=torch.float64)}
    assert _nonfinite_tensors(state) == ["b", "c"]


# --------------------------------------------------------------------------- curves, TensorBoard, provenance


def test_curves_and_tensorboard_scalars(train_fx: AVFixture, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert train_cli.main(train_argv(train_fx, out, "--eval-every", "1", "--tensorboard")) == 0
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 400  # two panels: loss, cIoU / AUC
    records = _records(out)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "data/failed_clips", "eval/ciou", "eval/auc", "eval/mean_ciou"} <= tags
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("train/loss")] == \
        [(r["epoch"], round(r["loss"], 5)) for r in records[:2]]
    # the evaluation after epoch 1 (--eval-every 1) and the final one at epoch 2
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("eval/auc")] == \
        [(1, round(records[0]["eval"]["auc"], 4)), (2, round(records[2]["final_eval"]["auc"], 4))]


def test_curves_without_evaluation(train_fx: AVFixture, tmp_path: Path) -> None:
    from PIL import Image

    train(train_config(train_fx, test_list="", epochs=1), tmp_path / "run", progress=False)
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.size[0] < 1000  # the loss panel alone


def test_provenance_outside_a_git_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    from marginnce_kit.training import records as module

    p = module.provenance()
    assert p["torch"] == torch.__version__ and p["cuda"] == torch.version.cuda and p["device"] == "cpu"
    if p["git_commit"] is not None:  # a checkout: a 40-hex commit and a bool
        assert len(p["git_commit"]) == 40 and isinstance(p["git_dirty"], bool)
    monkeypatch.setattr(module, "_git", lambda args, cwd: None)  # no git, or not a checkout
    p = module.provenance()
    assert p["git_commit"] is None and p["git_dirty"] is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.undo()
    monkeypatch.setattr(module.subprocess, "run", no_git)
    assert module.provenance()["git_commit"] is None  # never fails
