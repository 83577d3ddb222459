"""The patched upstreams train, and test, on CPU with ``--margin -0.2`` (issue 22).

Gated on ``MARGINNCE_UPSTREAM_{EZVSL,LVS,SLAVC,FNAC}`` (see ``tests/patch_upstreams.py``): each patch
is applied to a temporary checkout of its pin, and the upstream's own ``train.py`` runs for two steps
(batch of 2, ``--workers 0``) on fixture clips written here in the layout that upstream reads: frames
(``frames/<id>.jpg``; FNAC's VGGSound loader reads ``frames/<id>.png``) and 4 s 16 kHz wavs
(``audio/<id>.wav``), named after the first ids of the checkout's own ``metadata/vggss_test.csv`` so
that the validation upstream runs before and after each epoch finds their VGG-SS boxes in
``metadata/vggss.json``. The run must exit 0 and print a finite loss; EZ-VSL's and LVS's ``test.py``
then evaluate the checkpoint it wrote.

No stubs and no network: a test skips, naming them, when a module its upstream imports is missing,
and the ImageNet ResNet-18 that EZ-VSL, SLAVC and FNAC load comes from ``$TORCH_HOME`` (a randomly
initialised one written here, under the file name torchvision's cache uses), as the patch headers
say to run without network. The clips are noise: these runs check that the code paths work, not what
they learn.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from .patch_upstreams import MARGIN, REPO, UPSTREAMS, isolated, patched_checkout

# 2 CPU cores: a step of the upstreams' ResNet-18 pair at 224 pixels takes seconds; each test runs
# one training of two steps plus its evaluations
TIMEOUT_S = 600


def require(key: str, which: str = "train_deps") -> None:
    up = UPSTREAMS[key]
    if not os.environ.get(up.env):
        pytest.skip(f"{up.env} is not set (a git clone of https://github.com/{up.repository})")
    missing = [m for m in getattr(up, which) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{up.repository} imports {', '.join(missing)}, not installed in {sys.executable}")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A ``$TORCH_HOME`` whose torchvision cache holds a ResNet-18 under the ImageNet weights' file name."""
    from torchvision.models import ResNet18_Weights, resnet18

    home = tmp_path_factory.mktemp("torch-home")
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), cache / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    return home


def vggss_test_ids(tree: Path, n: int) -> list[str]:
    with open(tree / "metadata" / "vggss_test.csv") as f:
        return [row[0] for row in csv.reader(f)][:n]


def write_clips(root: Path, ids: list[str], ext: str = "jpg", seed: int = 0) -> Path:
    """``root/frames/<id>.<ext>`` (160 x 120 RGB) and ``root/audio/<id>.wav`` (4 s, 16 kHz, 16 bit)."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True)
    (root / "audio").mkdir()
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(root / "frames" / f"{i}.{ext}")
        sf.write(root / "audio" / f"{i}.wav", rng.uniform(-0.5, 0.5, 4 * 16000), 16000, subtype="PCM_16")
    return root


def run(script: str, tree: Path, args: list[str], torch_home: Path | None = None) -> str:
    """``python <script> <args>`` in ``tree`` with this checkout's package; returns stdout + stderr."""
    # one intra-op thread: on a busy 2-core machine two threads per process run these steps several times slower
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    if torch_home is not None:
        env["TORCH_HOME"] = str(torch_home)
    proc = subprocess.run([sys.executable, script, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def logged_losses(out: str) -> list[float]:
    """The current-batch losses of the EZ-VSL family's ProgressMeter lines (``Loss 0.003 (0.003)``)."""
    return [float(x) for x in re.findall(r"\tLoss\s+(\S+) \(", out)]


def train_ezvsl_family(key: str, tmp_path: Path, torch_home: Path, ext: str = "jpg") -> tuple[Path, Path, str]:
    """Two epochs of one step (2 training clips, batch 2) with one validation clip; returns the tree,
    the experiment directory and the output."""
    tree = patched_checkout(key, tmp_path / "upstream")
    ids = vggss_test_ids(tree, 3)
    train = write_clips(tmp_path / "train", ids[:2], ext)
    test = write_clips(tmp_path / "test", ids[2:], ext, seed=1)
    out = run("train.py", tree, ["--train_data_path", str(train), "--test_data_path", f"{test}/", "--trainset", "vggss",
                                 "--testset", "vggss", "--batch_size", "2", "--epochs", "2", "--workers", "0",
                                 "--margin", str(MARGIN), "--model_dir", str(tmp_path / "ck"), "--experiment_name", "run"],
              torch_home)
    losses = logged_losses(out)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), out[-3000:]
    assert json.loads((tmp_path / "ck" / "run" / "configs.json").read_text())["margin"] == MARGIN
    return tree, tmp_path / "ck" / "run", out


@pytest.mark.slow
def test_ezvsl_trains_then_test_py_evaluates(tmp_path, torch_home):
    require("ezvsl", "test_deps")
    tree, run_dir, _ = train_ezvsl_family("ezvsl", tmp_path, torch_home)
    # epoch 2's checkpoint holds epoch 1's numpy cIoU: torch >= 2.6 loads it only with weights_only=False
    assert isinstance(torch.load(run_dir / "best.pth", weights_only=False)["best_cIoU"], np.generic)
    out = run("test.py", tree, ["--test_data_path", f"{tmp_path / 'test'}/", "--testset", "vggss", "--workers", "0",
                                "--margin", str(MARGIN), "--model_dir", str(tmp_path / "ck"), "--experiment_name", "run"],
              torch_home)
    assert f"loaded from {run_dir / 'best.pth'}" in out
    assert re.search(r"^AV: AP50\(cIoU\)=\S+, Avg-cIoU=\S+, AUC=\S+$", out, re.M), out[-3000:]


@pytest.mark.slow
def test_slavc_trains(tmp_path, torch_home):
    require("slavc")
    _, run_dir, _ = train_ezvsl_family("slavc", tmp_path, torch_home)
    assert len(logged_losses((run_dir / "train.log").read_text())) == 2  # SLAVC also logs to train.log


@pytest.mark.slow
def test_fnac_trains_on_png_frames(tmp_path, torch_home):
    require("fnac")
    _, _, out = train_ezvsl_family("fnac", tmp_path, torch_home, ext="png")
    assert "train sample amount: 1" in out and "test sample amount: 1" in out


def _lvs_args(**overrides) -> Namespace:
    values = dict(epsilon=0.65, epsilon2=0.4, tri_map=True, Neg=True, random_threshold=None, margin=0.0)
    values.update(overrides)
    return Namespace(**values)


@pytest.mark.slow
def test_lvs_trains_checkpoints_resumes_and_tests(tmp_path):
    """Our train.py on the upstream loader: ``--data_path`` without a trailing '/', ids without files
    skipped and counted; the checkpoint loads into test.py's ``nn.DataParallel`` model, a second run
    resumes from it, and test.py (on CPU) evaluates it over the clips of ``metadata/vggss_test.csv``."""
    require("lvs", "test_deps")
    tree = patched_checkout("lvs", tmp_path / "upstream")
    ids = vggss_test_ids(tree, 4)
    data = write_clips(tmp_path / "data", ids)
    (tmp_path / "train.txt").write_text("\n".join(ids[:2] + ["gone_000001", "gone_000002.mp4"] + ids[2:]) + "\n")
    args = ["--data_path", str(data), "--train_list", str(tmp_path / "train.txt"), "--image_size", "64",
            "--batch_size", "2", "--epochs", "1", "--workers", "0", "--margin", str(MARGIN),
            "--summaries_dir", str(tmp_path / "ckpt"), "--device", "cpu"]
    out = run("train.py", tree, args)
    assert f"skipped 2 of 6 ids without both {data}/frames/<id>.jpg and {data}/audio/<id>.wav" in out
    assert "4 training clips, margin -0.2 (2 ids of --train_list skipped)" in out
    losses = [float(x) for x in re.findall(r"step \d+/2 loss (\S+)", out)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), out

    ckpt_path = tmp_path / "ckpt" / "lvs_latest.pth.tar"
    ckpt = torch.load(ckpt_path, map_location="cpu")  # torch's default (weights_only=True on torch >= 2.6) takes it
    assert ckpt["epoch"] == 1 and ckpt["args"]["margin"] == MARGIN
    assert all(k.startswith("module.") for k in ckpt["model_state_dict"])
    with isolated(tree), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")
        from model import AVENet  # type: ignore[import-not-found]

        model = nn.DataParallel(AVENet(_lvs_args()))
        model.load_state_dict(ckpt["model_state_dict"])  # as test.py loads it (strict)
        torch.manual_seed(0)  # train.py's --seed default, before it builds the model
        initial = AVENet(_lvs_args()).state_dict()
    assert not torch.equal(ckpt["model_state_dict"]["module.audnet.conv1_a.weight"], initial["audnet.conv1_a.weight"])

    again = run("train.py", tree, args)
    assert "at epoch 1" in again and "step" not in again  # resumed, nothing left to train

    with open(tree / "metadata" / "vggss_test.csv", "w") as f:  # test.py reads every clip listed there
        f.write("".join(f"{i}\n" for i in ids[:2]))
    out = run("test.py", tree, ["--data_path", str(data), "--summaries_dir", str(ckpt_path), "--testset", "vggss",
                                "--image_size", "64", "--margin", str(MARGIN)])
    assert "load pretrained model." in out and "0 / 1\n1 / 1\n" in out
    ciou, auc = re.search(r"^cIoU (\S+)$", out, re.M), re.search(r"^auc (\S+)$", out, re.M)
    assert ciou and auc and 0 <= float(ciou.group(1)) <= 1 and 0 <= float(auc.group(1)) <= 1, out[-3000:]


def test_lvs_training_refuses_a_list_with_no_clip(tmp_path):
    """No id of --train_list has both files (e.g. a wrong --data_path): one clear error before training."""
    require("lvs")
    tree = patched_checkout("lvs", tmp_path / "upstream")
    data = write_clips(tmp_path / "data", ["present_000001"])
    args = Namespace(data_path=str(data), testset="vggss", image_size=64)
    with isolated(tree), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")
        mp.chdir(tree)  # the upstream loader opens metadata/vggss_test.csv relative to the repository root
        import train  # type: ignore[import-not-found]

        with pytest.raises(ValueError, match=r"--train_list: none of its 2 ids has both .*frames/<id>\.jpg"):
            train.TrainClips(args, ["gone_000001", "gone_000002"])
        clips = train.TrainClips(args, ["present_000001", "gone_000001"])
    assert clips.skipped == ["gone_000001"] and clips.video_files == ["present_000001.mp4"]
