"""The trainer's configuration on the tiny dataset of tests/fixtures.py: bad values named (field, expected, got),
other argument errors, ``--workers auto``, ``--image-size 112`` (trained at 112, scored at 224), ImageNet weights from
a local file or the message when offline (no network either way); and the global-batch sampler behind ``batch_size``
and ``world_size``. The runs themselves (end to end, resume, broken data, curves) are in test_train.py."""

from __future__ import annotations

import json
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
from marginnce_kit.train import (  # noqa: E402
    GlobalBatchSampler,
    TrainConfig,
    build_train_model,
    effective_config,
    train,
)
from marginnce_kit.training.config import AUTO_WORKERS  # noqa: E402
from marginnce_kit.training.runtime import auto_workers  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_argv, train_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def test_bad_config_values_are_named(train_fx: AVFixture, tmp_path: Path, field: str, value, error, message) -> None:
    with pytest.raises(error, match=message):
        train(replace(train_config(train_fx), **{field: value}), tmp_path / "run", progress=False)


def test_other_argument_errors(train_fx: AVFixture, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stop_after_epoch: expected an int >= 1, got 0"):
        train(train_config(train_fx), tmp_path, stop_after_epoch=0)
    with pytest.raises(ValueError, match=r"config: unknown keys \['lr_decay'\]"):
        TrainConfig.from_dict({**asdict(train_config(train_fx)), "lr_decay": "cosine"})
    # a config saved before a field existed reads with that field's default
    older = {k: v for k, v in asdict(train_config(train_fx, norm="group")).items() if k not in ("norm", "sync_batchnorm")}
    assert TrainConfig.from_dict(older) == train_config(train_fx)
    with pytest.raises(ValueError, match="pretrained: the ImageNet weights are for norm 'batch', got norm 'group'"):
        train(train_config(train_fx, backbone="resnet18", pretrained=True, norm="group"), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: expected 'cpu' on this machine"):
            train(train_config(train_fx, device="cuda"), tmp_path / "run", progress=False)
    # the CLI reads --max-failures as a fraction (decimal point) or a count (integer)
    args = train_cli.parse_args(train_argv(train_fx, tmp_path, "--max-failures", "3"))
    assert args.max_failures == 3 and isinstance(args.max_failures, int)
    assert train_cli.parse_args(train_argv(train_fx, tmp_path, "--max-failures", "0.05")).max_failures == 0.05


def test_workers_auto(train_fx: AVFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers auto (the default, -1): 0 on CPU; on CUDA min(8, cores of this rank - 1)."""
    assert TrainConfig().workers == AUTO_WORKERS == -1
    assert train_cli.parse_args(train_argv(train_fx, tmp_path, "--workers", "auto")).workers == AUTO_WORKERS
    assert train_cli.parse_args(train_argv(train_fx, tmp_path, "--workers", "3")).workers == 3
    assert effective_config(train_config(train_fx, workers=AUTO_WORKERS))[0].workers == 0  # CPU
    assert effective_config(train_config(train_fx, workers=5))[0].workers == 5  # a number is kept
    cuda = replace(train_config(train_fx), device="cuda", workers=AUTO_WORKERS)
    for cores, local_world, expected in ((16, None, 8), (16, "4", 3), (4, None, 3), (1, None, 0), (8, "8", 0)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
        assert auto_workers("cuda") == expected, (cores, local_world)
        assert effective_config(cuda)[0].workers == expected
    assert auto_workers("cpu") == 0


# --------------------------------------------------------------------------- image size


def test_112_pixel_runs_train_and_are_scored_at_224(train_fx: AVFixture, tmp_path: Path) -> None:
    """--image-size 112: 112 x 112 crops in training and test, ground truth and scoring at the protocol's
    224 x 224; the evaluator CLI reads the image size from the checkpoint (the same numbers as the run's)."""
    from marginnce_kit.train import build_test_set, build_train_set

    config = train_config(train_fx, image_size=112, epochs=1)
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
        train(train_config(train_fx, image_size=112, backbone="resnet18"), tmp_path / "r18", progress=False)


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
