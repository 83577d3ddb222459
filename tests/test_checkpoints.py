"""Checkpoints from elsewhere (marginnce_kit/training/checkpoint.py, marginnce_kit/io.py): weights saved
through a DDP or ``torch.compile`` wrapper, a config written by another version, a file cut short, and a
file ``weights_only`` refuses -- each through ``load_model``, ``--resume`` and ``evaluate``'s command line.

Replayed reports: weights saved through ``DataParallel`` / ``DistributedDataParallel`` carry ``module.``
keys and fail a strict ``load_state_dict`` (pytorch/pytorch#3805); a ``torch.compile``-d model's
checkpoint carries ``_orig_mod.`` and cannot be resumed (karpathy/nanoGPT#325); ``torch.load`` of an
incompletely downloaded file reports "failed finding central directory", which does not say the file is
short (OpenTalker/SadTalker#217)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402
from marginnce_kit.io import TorchFileError, load_weights_only  # noqa: E402
from marginnce_kit.train import ConfigError, load_checkpoint, load_model, train  # noqa: E402
from marginnce_kit.training.checkpoint import model_state  # noqa: E402
from marginnce_loss import __version__  # noqa: E402

from .fixtures import AVFixture, train_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fx(av_dataset) -> AVFixture:  # tests/conftest.py
    return av_dataset(n_train=8, n_test=4)


@pytest.fixture(scope="module")
def run(fx: AVFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after epoch 1 of 2 (so ``--resume`` has an epoch left to train)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(train_config(fx), out, progress=False, stop_after_epoch=1)
    return out


def _rewrite(src: Path, dst: Path, change: Callable[[dict], dict]) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(change(state), dst)
    return dst


def _evaluate_error(fx: AVFixture, ckpt: Path, capsys: pytest.CaptureFixture) -> str:
    argv = ["--checkpoint", str(ckpt), "--test-root", str(fx.root), "--test-list", str(fx.test_list),
            "--annotations", str(fx.annotations), "--no-progress"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(evaluate_cli.main, argv, prog="prog")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prog: error: "), err
    return lines[0]


def test_checkpoint_records_the_version_that_wrote_it(run: Path) -> None:
    assert load_checkpoint(run / "checkpoint.pt")["marginnce_loss"] == __version__


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapped_weights_load_as_the_plain_model(run: Path, tmp_path: Path, prefix: str) -> None:
    plain, _, _ = load_model(run / "checkpoint.pt")
    wrapped = _rewrite(run / "checkpoint.pt", tmp_path / "wrapped.pt",
                       lambda s: {**s, "model": {prefix + k: v for k, v in s["model"].items()}})
    model, _, state = load_model(wrapped)
    assert all(k.startswith(prefix) for k in state["model"])  # the checkpoint itself is left as it is
    for (k, a), (k2, b) in zip(plain.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    # only a prefix that every key carries is removed (a model whose own first module is called "module")
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert set(model_state({"model": mixed})) == {"module.a", "b"}


def test_resume_takes_ddp_prefixed_weights(fx: AVFixture, run: Path, tmp_path: Path) -> None:
    """A run whose checkpoint was written through a DDP wrapper resumes and ends where the plain one does."""
    import shutil

    a, b = tmp_path / "plain", tmp_path / "ddp"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    _rewrite(b / "checkpoint.pt", b / "checkpoint.pt",
             lambda s: {**s, "model": {"module." + k: v for k, v in s["model"].items()}})
    train(train_config(fx), a, progress=False, resume=True)
    train(train_config(fx), b, progress=False, resume=True)
    sa = load_checkpoint(a / "checkpoint.pt")
    sb = load_checkpoint(b / "checkpoint.pt")
    assert sa["epoch"] == sb["epoch"] == 2
    assert set(sb["model"]) == set(sa["model"])  # written back under the plain names
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k


def test_unknown_config_fields_name_the_versions(fx: AVFixture, run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    newer = _rewrite(run / "checkpoint.pt", tmp_path / "newer.pt",
                     lambda s: {**s, "config": {**s["config"], "lr_decay": "cosine"}, "marginnce_loss": "9.9.0"})
    with pytest.raises(ConfigError, match=r"config fields \['lr_decay'\] unknown to this version \(written by "
                                          rf"marginnce-loss 9\.9\.0; this is marginnce-loss {__version__}\)"):
        load_model(newer)
    line = _evaluate_error(fx, newer, capsys)
    assert "['lr_decay']" in line and "9.9.0" in line
    # a checkpoint from before versions were recorded says so
    old = _rewrite(newer, tmp_path / "old.pt", lambda s: {k: v for k, v in s.items() if k != "marginnce_loss"})
    with pytest.raises(ConfigError, match="written by a version that did not record itself"):
        load_model(old)
    # --resume reads the same way: one ConfigError, not a ValueError traceback from the dataclass
    folder = tmp_path / "resume"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(newer.read_bytes())
    with pytest.raises(ConfigError, match=r"\['lr_decay'\]"):
        train(train_config(fx), folder, progress=False, resume=True)


@pytest.mark.parametrize("keep", [0, 100, 0.5, -1])
def test_a_file_cut_short_is_named_as_such(fx: AVFixture, run: Path, tmp_path: Path, keep: float,
                                           capsys: pytest.CaptureFixture) -> None:
    data = (run / "checkpoint.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) - 1 if keep == -1 else keep)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:n])
    with pytest.raises(TorchFileError) as e:
        load_weights_only(cut, "checkpoint")
    assert e.value.reason == "cut short" and f"{n} bytes" in str(e.value)
    line = _evaluate_error(fx, cut, capsys)
    assert "file is cut short or not a checkpoint" in line and "weights_only" not in line, line


def test_other_files_are_not_checkpoints(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "file is cut short or not a checkpoint" in _evaluate_error(fx, text, capsys)


def test_an_unsafe_file_is_told_apart(fx: AVFixture, run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    unsafe = _rewrite(run / "checkpoint.pt", tmp_path / "unsafe.pt", lambda s: {**s, "payload": Path("x")})
    with pytest.raises(TorchFileError) as e:
        load_weights_only(unsafe, "checkpoint")
    assert e.value.reason == "unsafe"
    line = _evaluate_error(fx, unsafe, capsys)
    assert "holds objects other than tensors" in line and "cut short" not in line, line


def test_weights_that_do_not_fit_are_one_line(fx: AVFixture, run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    other = _rewrite(run / "checkpoint.pt", tmp_path / "other.pt",
                     lambda s: {**s, "config": {**s["config"], "dim": 16}})
    with pytest.raises(ConfigError, match="its weights do not fit its config's model"):
        load_model(other)
    assert "do not fit" in _evaluate_error(fx, other, capsys)
