"""The baselines trainer end to end on a tiny dataset in the real on-disk layout (tests/fixtures.py):
CLI train -> evaluate, resume = uninterrupted run (bitwise), determinism, broken-data accounting,
config errors, the global-batch sampler. CPU, small backbone (width 8), batch 4."""

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

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.data import DataError  # noqa: E402
from marginnce_kit.models import WEIGHT_DECAY  # noqa: E402
from marginnce_kit.train import (  # noqa: E402
    GlobalBatchSampler,
    TrainConfig,
    build_train_model,
    effective_config,
    load_checkpoint,
    train,
)
from marginnce_kit.training.config import AUTO_WORKERS  # noqa: E402
from marginnce_kit.training.runtime import auto_workers  # noqa: E402

from .fixtures import AVFixture, break_audio, break_frame, make_av_dataset, train_argv, train_config

METRIC_KEYS = {"ciou", "auc", "mean_ciou", "n", "data_failures", "per_clip", "failed"}
PROVENANCE_KEYS = {"marginnce_loss", "git_commit", "git_dirty", "python", "torch", "torchvision", "cuda", "cudnn", "device", "world_size",
                   "not_applied"}


def _effective(config: TrainConfig) -> dict:
    return asdict(effective_config(config)[0])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fx(av_dataset) -> AVFixture:  # tests/conftest.py
    return av_dataset(n_train=16, n_test=8)


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


def test_cli_train_then_evaluate(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert train_cli.main(train_argv(fx, out, "--eval-every", "1")) == 0
    captured = capsys.readouterr().out
    assert "reference margin -0.20: cIoU" in captured
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "metrics.jsonl", "final.json",
                                               "curves.png"}

    saved = json.loads((out / "config.json").read_text())
    config = TrainConfig.from_dict(saved)
    # the CLI maps every flag onto the config; recorded as it applies on the CPU (no autocast, no SyncBatchNorm)
    assert config == replace(train_config(fx, eval_every=1), amp=False, sync_batchnorm=False,
                             weight_decay=WEIGHT_DECAY["reference"])  # --weight-decay auto: the method's
    assert set(saved["provenance"]) == PROVENANCE_KEYS
    assert saved["provenance"]["not_applied"] == {"amp": True, "sync_batchnorm": True}
    assert saved["provenance"]["torch"] == torch.__version__ and saved["provenance"]["device"] == "cpu"
    state = load_checkpoint(out / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "epoch", "config", "history", "selection"} and state["selection"] == "last"
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


def test_resume_equals_uninterrupted_run(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, model="ezvsl", margin=-0.1)
    whole = train(config, tmp_path / "whole", progress=False)

    part = tmp_path / "part"
    first = train(config, part, progress=False, stop_after_epoch=1)
    assert first == {"config": _effective(config), "epochs_completed": 1, "stopped": True}
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1 and not (part / "final.json").exists()
    # from the command line, with DataLoader worker processes: crops and flips do not depend on which
    # process decodes a clip
    assert train_cli.main(train_argv(fx, part, "--model", "ezvsl", "--margin", "-0.1", "--resume", "--workers", "2")) == 0
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
    # which clips, and why: in every epoch's record and in final.json
    assert set(record["failed_clips"]) == {fx.train_ids[1], fx.train_ids[6]}
    assert record["failed_clips"][fx.train_ids[1]].startswith("frame does not decode: UnidentifiedImageError")
    assert json.loads((tmp_path / "ok" / "final.json").read_text())["failed_clips"] == {"train": record["failed_clips"]}
    # one allowed: the run stops inside the first epoch, naming both clips, before any checkpoint
    ids = rf"(?=.*{fx.train_ids[1]}: frame does not decode: UnidentifiedImageError)(?=.*{fx.train_ids[6]}: audio does not decode: )"
    with pytest.raises(DataError, match=rf"(?s)2 of 8 clips missing or broken \(allowed: 1\){ids}"):
        train(replace(config, max_failures=1), tmp_path / "stop", progress=False)
    assert not (tmp_path / "stop" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("field, value, error, message", [
    ("model", "simclr", ValueError, r"model: expected one of \('lvs', 'ezvsl', 'reference'\), got 'simclr'"),
    ("backbone", "vit", ValueError, r"backbone: expected one of .*got 'vit'"),
    ("norm", "layer", ValueError, r"norm: expected one of \('batch', 'group'\), got 'layer'"),
    ("epochs", 0, ValueError, r"epochs: expected an int >= 1, got 0"),
    ("epochs", 2.0, TypeError, r"epochs: expected an int, got float 2.0"),
    ("batch_size", 1, ValueError, r"batch_size: expected an int >= 2, got 1"),
    ("lr", 0.0, ValueError, r"lr: expected a finite float > 0, got 0.0"),
    ("lr", float("nan"), ValueError, r"lr: expected a finite float, got nan"),
    ("weight_decay", -1e-4, ValueError, r"weight_decay: expected a finite float >= 0, got -0.0001"),
    ("margin", float("inf"), ValueError, r"margin: expected a finite float, got inf"),
    ("max_failures", 1.5, ValueError, r"max_failures: expected a fraction in \[0, 1\) or a count >= 0, got 1.5"),
    ("workers", -2, ValueError, r"workers: expected an int >= 0, or -1 \(auto\), got -2"),
    ("workers", 1.0, TypeError, r"workers: expected an int, got float 1.0"),
    ("seed", -3, ValueError, r"seed: expected an int >= 0, got -3"),
    ("dim", 0, ValueError, r"dim: expected an int >= 1, got 0"),
    ("width", 1, ValueError, r"width: expected an int >= 2, got 1"),
    ("device", "tpu", ValueError, r"device: expected one of \('cpu', 'cuda'\), got 'tpu'"),
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
    with pytest.raises(ValueError, match=r"stop_after_epoch: expected an int >= 1, got 0"):
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


def test_workers_auto(fx: AVFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers auto (the default, -1): 0 on CPU; on CUDA min(8, cores of this rank - 1)."""
    assert TrainConfig().workers == AUTO_WORKERS == -1
    assert train_cli.parse_args(train_argv(fx, tmp_path, "--workers", "auto")).workers == AUTO_WORKERS
    assert train_cli.parse_args(train_argv(fx, tmp_path, "--workers", "3")).workers == 3
    assert effective_config(train_config(fx, workers=AUTO_WORKERS))[0].workers == 0  # CPU
    assert effective_config(train_config(fx, workers=5))[0].workers == 5  # a number is kept
    cuda = replace(train_config(fx), device="cuda", workers=AUTO_WORKERS)
    for cores, local_world, expected in ((16, None, 8), (16, "4", 3), (4, None, 3), (1, None, 0), (8, "8", 0)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
        assert auto_workers("cuda") == expected, (cores, local_world)
        assert effective_config(cuda)[0].workers == expected
    assert auto_workers("cpu") == 0


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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(fx: AVFixture, tmp_path: Path) -> None:
    from marginnce_kit.train import NonFiniteLossError, build_train_set

    config = train_config(fx, epochs=3)
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after_epoch=1)
    ckpt, log = (out / "checkpoint.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()
    poison = fx.train_ids[5]
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


def test_112_pixel_runs_train_and_are_scored_at_224(fx: AVFixture, tmp_path: Path) -> None:
    """--image-size 112: 112 x 112 crops in training and test, ground truth and scoring at the protocol's
    224 x 224; the evaluator CLI reads the image size from the checkpoint (the same numbers as the run's)."""
    from marginnce_kit.train import build_test_set, build_train_set

    config = train_config(fx, image_size=112, epochs=1)
    item = build_train_set(config)[0]
    assert tuple(item["frame"].shape) == (3, 112, 112)
    test_item = build_test_set(config.test_root, config.test_list, config.annotations, image_size=112)[0]
    assert tuple(test_item["frame"].shape) == (3, 112, 112) and tuple(test_item["gt_map"].shape) == (224, 224)
    out = tmp_path / "run"
    final = train(config, out, progress=False)
    assert json.loads((out / "config.json").read_text())["image_size"] == 112
    result_path = tmp_path / "eval.json"
    assert evaluate_cli.main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(result_path)]) == 0
    assert json.loads(result_path.read_text())["eval"] == final["eval"]
    with pytest.raises(ValueError, match=r"image_size: expected 224 with backbone 'resnet18'"):
        train(train_config(fx, image_size=112, backbone="resnet18"), tmp_path / "r18", progress=False)


def test_curves_and_tensorboard_scalars(fx: AVFixture, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert train_cli.main(train_argv(fx, out, "--eval-every", "1", "--tensorboard")) == 0
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


def test_curves_without_evaluation(fx: AVFixture, tmp_path: Path) -> None:
    from PIL import Image

    train(train_config(fx, test_list="", epochs=1), tmp_path / "run", progress=False)
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


# --------------------------------------------------------------------------- ImageNet weights without a network


def test_pretrained_from_a_local_file_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--pretrained --visual-weights FILE trains, and evaluate --ogl --visual-weights FILE scores, with
    no network: any download attempt fails the test."""
    from torchvision.models import resnet18

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    torch.manual_seed(7)
    weights = tmp_path / "resnet18_random.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    small = make_av_dataset(tmp_path / "data", n_train=4, n_test=2)
    out = tmp_path / "run"
    argv = train_argv(small, out, "--backbone", "resnet18", "--pretrained", "--visual-weights", str(weights),
                      "--epochs", "2", "--limit-steps", "1", "--batch-size", "2")
    assert train_cli.main([*argv, "--stop-after-epoch", "1"]) == 0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.pretrained and config.visual_weights == str(weights)
    model = build_train_model(config)  # the file's weights reach the visual encoder
    saved = torch.load(weights, weights_only=True)
    torch.testing.assert_close(model.imgnet[0].weight, saved["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.imgnet[7][1].conv2.weight, saved["layer4.1.conv2.weight"], rtol=0, atol=0)
    # resuming reads every weight from the checkpoint: the weights file may have moved meanwhile
    weights.rename(tmp_path / "moved.pth")
    assert train_cli.main([*argv, "--resume"]) == 0
    result = tmp_path / "eval.json"
    assert evaluate_cli.main(["--checkpoint", str(out / "checkpoint.pt"), "--ogl", "--visual-weights",
                              str(tmp_path / "moved.pth"), "--out", str(result)]) == 0
    assert json.loads(result.read_text())["eval"]["n"] == 2


def test_pretrained_offline_says_where_to_put_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    from urllib.error import URLError

    from torchvision.models import resnet18

    from marginnce_kit.cli import run_main
    from marginnce_kit.models import torchvision_cache_path

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = torchvision_cache_path()
    assert cached == tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    small = make_av_dataset(tmp_path / "data", n_train=4, n_test=0)
    argv = train_argv(small, tmp_path / "run", "--backbone", "resnet18", "--pretrained", "--epochs", "1",
                      "--batch-size", "2", "--limit-steps", "1")
    argv = argv[:argv.index("--test-root")] + argv[argv.index("--out"):]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(train_cli.main, argv, prog="prog")
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"prog: error: pretrained: no ImageNet ResNet-18 weights at {cached} and the download "
                           "failed (URLError")
    assert line.endswith(f"put torchvision's ImageNet ResNet-18 weights (resnet18-f37072fd.pth, from "
                         f"https://download.pytorch.org/models/resnet18-f37072fd.pth) at {cached}, or pass "
                         "--visual-weights PATH")
    assert not (tmp_path / "run").exists()
    # the same with the file where the message says: trains without a download
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(resnet18(weights=None).state_dict(), cached)
    assert train_cli.main(argv) == 0


def test_resume_from_an_older_checkpoint(fx: AVFixture, tmp_path: Path) -> None:
    """A checkpoint written before the effective settings were recorded (amp / sync_batchnorm true on
    CPU, no visual_weights field) resumes: configs are compared as they apply on the device."""
    config = train_config(fx, test_list="")
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after_epoch=1)
    state = load_checkpoint(out / "checkpoint.pt")
    older = {k: v for k, v in state["config"].items() if k != "visual_weights"}
    torch.save({**state, "config": {**older, "amp": True, "sync_batchnorm": True}}, out / "checkpoint.pt")
    assert train(config, out, resume=True, progress=False)["epochs_completed"] == 2
