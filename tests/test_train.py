"""The baselines trainer end to end on a tiny dataset in the real on-disk layout (tests/fixtures.py):
CLI train -> evaluate, resume = uninterrupted run (bitwise), determinism, broken-data accounting,
config errors, the global-batch sampler. CPU, small backbone (width 8), batch 4."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")
pytest.importorskip("tqdm")

from hypothesis import given, settings, strategies as st  # noqa: E402

from baselines import evaluate as evaluate_cli  # noqa: E402
from baselines import train as train_cli  # noqa: E402
from baselines.data import DataError  # noqa: E402
from baselines.train import (  # noqa: E402
    GlobalBatchSampler,
    TrainConfig,
    build_train_model,
    load_checkpoint,
    train,
)

from .fixtures import AVFixture, break_audio, break_frame, make_av_dataset, train_argv, train_config

METRIC_KEYS = {"ciou", "auc", "mean_ciou", "n", "data_failures", "per_clip", "failed"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny convolutions gain nothing from more, and a busy machine with
    several threads per process can slow them down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> AVFixture:
    return make_av_dataset(tmp_path_factory.mktemp("av") / "data", n_train=16, n_test=8)


def _records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_metrics(e: Dict[str, float], n: int) -> None:
    assert set(e) == METRIC_KEYS
    assert e["n"] == n and e["data_failures"] == 0
    for key in ("ciou", "auc", "mean_ciou"):
        assert 0.0 <= e[key] <= 100.0
    assert e["mean_ciou"] > 0.0  # masks of half the frame or more: some of the 8 boxes are hit


def _assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
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


def test_cli_train_then_evaluate(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert train_cli.main(train_argv(fx, out, "--eval-every", "1")) == 0
    assert "reference margin -0.20: cIoU" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "metrics.jsonl", "final.json"}

    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config == train_config(fx, eval_every=1)  # the CLI maps every flag onto the config
    state = load_checkpoint(out / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "epoch", "config", "history"}
    assert state["epoch"] == 2 and state["config"] == asdict(config)

    records = _records(out)
    assert [r.get("epoch") for r in records] == [1, 2, None]
    assert records[:2] == state["history"]
    for r in records[:2]:
        assert r["steps"] == 4 and r["skipped_batches"] == 0 and r["data_failures"] == 0  # 16 clips / batch 4
        assert math.isfinite(r["loss"]) and r["loss"] > 0
    _check_metrics(records[0]["eval"], 8)  # --eval-every 1: after epoch 1 (the last epoch has the final one)
    assert "eval" not in records[1]
    final = json.loads((out / "final.json").read_text())
    assert final["config"] == asdict(config) and final["epochs_completed"] == 2
    _check_metrics(final["eval"], 8)
    assert records[2] == {"final_eval": final["eval"]}

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


def test_resume_equals_uninterrupted_run(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, model="ezvsl", margin=-0.1)
    whole = train(config, tmp_path / "whole", progress=False)

    part = tmp_path / "part"
    first = train(config, part, progress=False, stop_after_epoch=1)
    assert first == {"config": asdict(config), "epochs_completed": 1, "stopped": True}
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1 and not (part / "final.json").exists()
    # from the command line, with DataLoader worker processes: crops and flips do not depend on which
    # process decodes a clip
    assert train_cli.main(train_argv(fx, part, "--model", "ezvsl", "--margin", "-0.1", "--resume", "--workers", "2")) == 0
    resumed = json.loads((part / "final.json").read_text())
    assert resumed["config"] == asdict(replace(config, workers=2))

    assert resumed["eval"] == whole["eval"] and resumed["epochs_completed"] == 2
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    _assert_same_state(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(tmp_path / "whole"))
    # stopping after the last epoch or before the checkpoint's epoch trains nothing more
    assert train(config, part, resume=True, progress=False, stop_after_epoch=1)["epochs_completed"] == 2
    # --stop-after-epoch on the command line
    assert train_cli.main(train_argv(fx, tmp_path / "cli", "--stop-after-epoch", "1", "--epochs", "3")) == 0
    assert load_checkpoint(tmp_path / "cli" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "cli" / "final.json").exists()
    with pytest.raises(ValueError, match=r"resume: the checkpoint's config differs.*'margin': \(-0.1, -0.2\)"):
        train(replace(config, margin=-0.2), part, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="resume: expected a checkpoint"):
        train(config, tmp_path / "nothing", resume=True, progress=False)


def test_identical_runs_give_identical_weights(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, model="lvs", epochs=1, test_list="", dim=16)
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
    # one allowed: the run stops inside the first epoch, naming both clips, before any checkpoint
    ids = rf"(?=.*{fx.train_ids[1]}: UnidentifiedImageError)(?=.*{fx.train_ids[6]}: )"
    with pytest.raises(DataError, match=rf"(?s)2 of 8 clips missing or broken \(allowed: 1\){ids}"):
        train(replace(config, max_failures=1), tmp_path / "stop", progress=False)
    assert not (tmp_path / "stop" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("field, value, error, message", [
    ("model", "simclr", ValueError, r"model: expected one of \('lvs', 'ezvsl', 'reference'\), got 'simclr'"),
    ("backbone", "vit", ValueError, r"backbone: expected one of .*got 'vit'"),
    ("norm", "layer", ValueError, r"norm: expected one of \('batch', 'group'\), got 'layer'"),
    ("epochs", 0, ValueError, r"epochs: expected an int >= 1, got 0"),
    ("epochs", 2.0, ValueError, r"epochs: expected an int >= 1, got 2.0"),
    ("batch_size", 1, ValueError, r"batch_size: expected an int >= 2, got 1"),
    ("lr", 0.0, ValueError, r"lr: expected a finite float > 0, got 0.0"),
    ("lr", float("nan"), ValueError, r"lr: expected a finite float > 0, got nan"),
    ("weight_decay", -1e-4, ValueError, r"weight_decay: expected a finite float >= 0, got -0.0001"),
    ("margin", float("inf"), ValueError, r"margin: expected a finite float, got inf"),
    ("max_failures", 1.5, ValueError, r"max_failures: expected a fraction in \[0, 1\) or a count >= 0, got 1.5"),
    ("workers", -1, ValueError, r"workers: expected an int >= 0, got -1"),
    ("seed", -3, ValueError, r"seed: expected an int >= 0, got -3"),
    ("dim", 0, ValueError, r"dim: expected an int >= 1, got 0"),
    ("width", 1, ValueError, r"width: expected an int >= 2, got 1"),
    ("device", "tpu", ValueError, r"device: expected 'cpu' or 'cuda', got 'tpu'"),
    ("amp", "yes", TypeError, r"amp: expected a bool, got str 'yes'"),
    ("train_list", "", ValueError, r"train_list: expected a path, got nothing"),
    ("annotations", "", ValueError, r"test_list: evaluation also needs test_root and annotations"),
    ("pretrained", True, ValueError, r"pretrained: ImageNet weights exist for backbone 'resnet18' only"),
    ("batch_size", 32, ValueError, r"batch_size: expected at most the 16 clips of the train set"),
])
def test_bad_config_values_are_named(fx: AVFixture, tmp_path: Path, field: str, value, error, message) -> None:
    with pytest.raises(error, match=message):
        train(replace(train_config(fx), **{field: value}), tmp_path / "run", progress=False)


def test_other_argument_errors(fx: AVFixture, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stop_after_epoch: expected None or an int >= 1, got 0"):
        train(train_config(fx), tmp_path, stop_after_epoch=0)
    with pytest.raises(ValueError, match=r"config: unknown keys \['lr_decay'\]"):
        TrainConfig.from_dict({**asdict(train_config(fx)), "lr_decay": "cosine"})
    # a config saved before a field existed reads with that field's default
    older = {k: v for k, v in asdict(train_config(fx, norm="group")).items() if k not in ("norm", "sync_batchnorm")}
    assert TrainConfig.from_dict(older) == train_config(fx)
    with pytest.raises(ValueError, match="pretrained: the ImageNet weights are for norm 'batch', got norm 'group'"):
        train(train_config(fx, backbone="resnet18", pretrained=True, norm="group"), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: expected 'cpu' on this machine"):
            train(train_config(fx, device="cuda"), tmp_path / "run", progress=False)
    # the CLI reads --max-failures as a fraction (decimal point) or a count (integer)
    args = train_cli.parse_args(train_argv(fx, tmp_path, "--max-failures", "3"))
    assert args.max_failures == 3 and isinstance(args.max_failures, int)
    assert train_cli.parse_args(train_argv(fx, tmp_path, "--max-failures", "0.05")).max_failures == 0.05


# --------------------------------------------------------------------------- the global-batch sampler


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 40), per_rank=st.integers(1, 5), world=st.integers(1, 4), seed=st.integers(0, 3),
       epoch=st.integers(0, 3))
def test_sampler_ranks_concatenate_to_the_single_process_batches(size, per_rank, world, seed, epoch) -> None:
    batch = per_rank * world
    single = GlobalBatchSampler(size, batch, seed=seed)
    single.set_epoch(epoch)
    ranks = [GlobalBatchSampler(size, batch, world, r, seed) for r in range(world)]
    for s in ranks:
        s.set_epoch(epoch)
    expected = list(single)
    assert len(expected) == len(single) == size // batch
    per_rank_batches = [list(s) for s in ranks]
    for k, global_batch in enumerate(expected):
        assert len(global_batch) == batch
        assert sum((b[k] for b in per_rank_batches), []) == global_batch
    used = sum(expected, [])
    assert len(set(used)) == len(used) and all(0 <= i < size for i in used)  # no clip twice in an epoch


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    def batches(seed: int, epoch: int):
        s = GlobalBatchSampler(50, 10, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    torch.manual_seed(0)
    a = batches(0, 1)
    torch.manual_seed(1)
    assert batches(0, 1) == a  # not the global RNG
    assert batches(0, 2) != a and batches(1, 1) != a
    s = GlobalBatchSampler(6, 2, shuffle=False)
    assert list(s) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="batch_size: expected a multiple of world_size = 2, got 3"):
        GlobalBatchSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="rank: expected an int < world_size = 2, got 2"):
        GlobalBatchSampler(10, 4, world_size=2, rank=2)
    with pytest.raises(ValueError, match="epoch: expected an int >= 0, got -1"):
        s.set_epoch(-1)


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_training_and_sync_batchnorm(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, device="cuda", epochs=1, amp=True)
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
