"""The kit's foundation modules: atomic writes (marginnce_kit.io), the on-disk layout (marginnce_kit.layout),
the config as the single source of the trainer's command line (marginnce_kit.training.config)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from marginnce_kit import layout
from marginnce_kit.io import atomic_write, atomic_write_json, atomic_write_text, temp_path

pytest.importorskip("torchvision")

from marginnce_kit.train import parse_args  # noqa: E402
from marginnce_kit.training.config import TrainConfig  # noqa: E402
from marginnce_kit.training.options import config_argv, config_from_args  # noqa: E402


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic_write_json({"a": 1}, path)
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left
    atomic_write_text("new", path)
    assert path.read_text() == "new"
    tmp = temp_path(path, ".png")
    assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.") and tmp.name.endswith(".tmp.png")


def test_layout(tmp_path: Path) -> None:
    layout.make_dirs(tmp_path / "root")
    assert layout.frame_path(tmp_path / "root", "abc_000010") == tmp_path / "root" / "frames" / "abc_000010.jpg"
    assert layout.audio_path(tmp_path / "root", "abc_000010") == tmp_path / "root" / "audio" / "abc_000010.wav"
    assert (tmp_path / "root" / "frames").is_dir() and (tmp_path / "root" / "audio").is_dir()


def test_every_config_field_is_a_documented_option() -> None:
    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"
    args = parse_args(["--train-root", "r", "--train-list", "l", "--out", "o"])
    assert config_from_args(args) == TrainConfig(train_root="r", train_list="l")  # the defaults are the config's


@pytest.mark.parametrize("changes", [
    {},
    {"model": "lvs", "margin": 0.0, "backbone": "small", "dim": 16, "width": 4, "norm": "group"},
    {"pretrained": True, "visual_weights": "w.pth", "amp": False, "cache": True, "gather_distributed": False,
     "sync_batchnorm": False, "max_failures": 3, "test_root": "t", "test_list": "tl", "annotations": "a.json",
     "annotation_format": "flickr", "epochs": 3, "batch_size": 8, "lr": 0.003, "weight_decay": 0.0, "seed": 7,
     "workers": 0, "device": "cuda", "eval_every": 2, "limit_steps": 5, "loss_cuda_graphs": True,
     "decode_device": "cuda"},
])
def test_config_argv_round_trips(changes) -> None:
    config = TrainConfig(train_root="r", train_list="l", **changes)
    assert config_from_args(parse_args([*config_argv(config), "--out", "o"])) == config


def test_range_checks_name_the_argument_the_range_and_the_value() -> None:
    from marginnce_kit._checks import check_float_in, check_int_in

    assert check_int_in("n", 3, 0, 3) == 3 and check_float_in("p", 0.5, 0.0, 1.0, high_open=True) == 0.5
    with pytest.raises(ValueError, match=r"^n: expected an int in \[0, 3\], got 5$"):
        check_int_in("n", 5, 0, 3)
    with pytest.raises(ValueError, match=r"^n: expected an int >= 1, got 0$"):
        check_int_in("n", 0, 1)
    with pytest.raises(TypeError, match=r"^n: expected an int, got float 2.5$"):
        check_int_in("n", 2.5, 0)
    with pytest.raises(ValueError, match=r"^p: expected a finite float in \[0.0, 1.0\), got 1.0$"):
        check_float_in("p", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"^b: expected a finite float in \(-1.0, 1.0\), got -1.0$"):
        check_float_in("b", -1.0, -1.0, 1.0, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"^s: expected a finite float, got nan$"):
        check_float_in("s", float("nan"), 0.0, 1.0)
