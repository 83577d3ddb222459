"""The trainer's and the evaluator's command lines under user errors (marginnce_kit/cli.py): one line on
stderr naming the problem and the fix, exit status 1, no traceback, nothing half-written; run
folders never overwritten silently; --help with defaults (the package's metadata: test_packaging.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")
pytest.importorskip("tqdm")

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.cli import UsageError, one_line, run_main  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_argv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fx(av_dataset) -> AVFixture:  # tests/conftest.py
    return av_dataset(n_train=8, n_test=4)


@pytest.fixture(scope="module")
def trained(fx: AVFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (small backbone, 8 clips, batch 4)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert train_cli.main(train_argv(fx, out, "--epochs", "1")) == 0
    return out


def _run(main: Callable, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(main, argv, prog="prog")
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prog: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the mechanism


def test_run_main_exit_status_and_one_line(capsys: pytest.CaptureFixture) -> None:
    def ok(argv):
        return 0

    def usage(argv):
        raise UsageError("--x: expected 1, got 2\nsecond line", fix="pass --x 1")

    def bug(argv):
        raise RuntimeError("a real bug")

    assert _run(ok, [], capsys)[0] == 0
    code, _, err = _run(usage, [], capsys)
    assert code == 1
    assert _one_error_line(err) == "prog: error: --x: expected 1, got 2; second line; pass --x 1"
    with pytest.raises(RuntimeError, match="a real bug"):  # bugs keep their traceback
        run_main(bug, [])
    assert one_line("a\n  b\n\nc") == "a; b; c"


# --------------------------------------------------------------------------- train


def test_broken_data_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fx = make_av_dataset(tmp_path / "data", n_train=8, n_test=0)
    fx.frame(fx.train_ids[3]).unlink()
    fx.audio(fx.train_ids[5]).unlink()
    out = tmp_path / "run"
    argv = [a for a in train_argv(fx, out, "--max-failures", "1")]
    argv = argv[:argv.index("--test-root")] + argv[argv.index("--out"):]  # no test split
    code, _, err = _run(train_cli.main, argv, capsys)
    assert code == 1
    _one_error_line(err, "2 of 8 clips missing or broken (allowed: 1)", f"{fx.train_ids[3]}: missing frame",
                    f"{fx.train_ids[5]}: missing audio", "drop these ids", "--write-clean")
    assert not out.exists()  # no stray config.json


def test_batch_larger_than_the_data(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code, _, err = _run(train_cli.main, train_argv(fx, out, "--batch-size", "128"), capsys)
    assert code == 1
    _one_error_line(err, "batch_size: expected at most the 8 clips of the train set", "pass --batch-size <= 8")
    assert not out.exists()


@pytest.mark.parametrize("flag, needle", [
    ("--train-list", "train_list: expected clip ids to train on, got none from"),
    ("--test-list", "test_list: expected clip ids to test on, got none from"),
])
def test_an_empty_id_list_is_named_before_training(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   flag: str, needle: str) -> None:
    """Not 'pass --batch-size <= 0' (train) nor a crash after training (test): one line, nothing written."""
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    argv = train_argv(fx, tmp_path / "run")
    argv[argv.index(flag) + 1] = str(empty)
    code, _, err = _run(train_cli.main, argv, capsys)
    assert code == 1
    _one_error_line(err, needle, "empty.csv")
    assert "--batch-size <=" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, needle", [
    ("--train-list", "nowhere.txt", "--train-list: no such file 'nowhere.txt'"),
    ("--train-root", "nowhere", "--train-root: no such folder 'nowhere'"),
    ("--annotations", "missing.json", "--annotations: no such file 'missing.json'"),
    ("--epochs", "0", "epochs: expected an int >= 1, got 0"),
    ("--width", "1", "width: expected an int >= 2, got 1"),
])
def test_bad_paths_and_values(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str,
                              needle: str) -> None:
    argv = train_argv(fx, tmp_path / "run")
    argv[argv.index(flag) + 1] = value
    code, _, err = _run(train_cli.main, argv, capsys)
    assert code == 1
    _one_error_line(err, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _run(train_cli.main, train_argv(fx, tmp_path / "run", "--device", "cuda"), capsys)
    assert code == 1
    _one_error_line(err, "CUDA is not available", "pass --device cpu")
    code, _, err = _run(evaluate_cli.main, ["--checkpoint", "x.pt", "--device", "cuda"], capsys)
    assert code == 1
    _one_error_line(err, "--device cuda: CUDA is not available", "pass --device cpu")


def test_a_run_folder_is_not_overwritten(fx: AVFixture, trained: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(trained)
    code, _, err = _run(train_cli.main, train_argv(fx, trained, "--epochs", "1", "--margin", "0"), capsys)
    assert code == 1
    _one_error_line(err, f"--out {trained} already holds a run", "--resume", "--overwrite")
    assert _snapshot(trained) == before  # byte for byte
    code, _, err = _run(train_cli.main, train_argv(fx, trained, "--resume", "--overwrite"), capsys)
    assert code == 1  # the two do not combine: one line, not argparse's usage block
    _one_error_line(err, "--resume", "--overwrite", "not both", "pass one of them")
    assert _snapshot(trained) == before
    # an explicit --overwrite replaces the run (and nothing of the old one stays)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "tensorboard").mkdir()
    (copy / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")
    assert train_cli.main(train_argv(fx, copy, "--epochs", "1", "--margin", "0", "--overwrite")) == 0
    assert train_cli.TrainConfig.from_dict(json.loads((copy / "config.json").read_text())).margin == 0.0
    assert not (copy / "tensorboard").exists()
    # an empty folder is no run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_cli.main(train_argv(fx, empty, "--epochs", "1")) == 0


def test_tensorboard_missing_is_one_line(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    code, _, err = _run(train_cli.main, train_argv(fx, tmp_path / "run", "--tensorboard"), capsys)
    assert code == 1
    _one_error_line(err, "--tensorboard needs the tensorboard package", "pip install tensorboard")
    assert not (tmp_path / "run").exists()


def test_help_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    for main in (train_cli.main, evaluate_cli.main):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "(default: 64)" in text or "(default: 128)" in text
        assert "(default: cpu)" in text
    # the usage example of evaluate keeps its line continuation (a backslash before the newline)
    assert "checkpoint.pt \\\n        --test-root" in evaluate_cli.__doc__


# --------------------------------------------------------------------------- evaluate


def test_evaluate_user_errors(fx: AVFixture, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _run(evaluate_cli.main, [], capsys)
    assert code == 1
    _one_error_line(err, "no checkpoint given", "give --checkpoint")
    code, _, err = _run(evaluate_cli.main, ["--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert code == 1
    _one_error_line(err, "checkpoint: no such file")
    # a pickle that needs code to load is refused (weights_only), not executed
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "epoch": 1, "payload": Path("x")}, evil)
    code, _, err = _run(evaluate_cli.main, ["--checkpoint", str(evil)], capsys)
    assert code == 1
    _one_error_line(err, "holds objects other than tensors, which weights_only=True refuses")
    # broken test data: one line naming the clips, and no half-written --out
    broken = make_av_dataset(tmp_path / "data", n_train=0, n_test=4)
    broken.frame(broken.test_ids[1]).unlink()
    result = tmp_path / "result.json"
    argv = ["--checkpoint", str(trained / "checkpoint.pt"), "--test-root", str(broken.root), "--test-list",
            str(broken.test_list), "--annotations", str(broken.annotations), "--out", str(result)]
    code, _, err = _run(evaluate_cli.main, argv, capsys)
    assert code == 1
    _one_error_line(err, f"{broken.test_ids[1]}: missing frame", "drop these ids")
    assert not result.exists()
    code, _, err = _run(evaluate_cli.main, ["--checkpoint", str(trained / "checkpoint.pt"), "--visual-weights", "w.pt"],
                        capsys)
    assert code == 1
    _one_error_line(err, "--visual-weights 'w.pt' is read for --ogl only")


# --------------------------------------------------------------------------- as a user runs them


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_python_m_from_another_directory(fx: AVFixture, tmp_path: Path) -> None:
    """``python -m marginnce_kit.train`` as a process, from a working directory outside the checkout: the
    user error is one line on stderr with status 1; relative paths are read from that directory."""
    done = _python(["-m", "marginnce_kit.train", *train_argv(fx, Path("run"), "--batch-size", "64")], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "python -m marginnce_kit.train: error: batch_size: expected at most the 8 clips of the train set (one global "
        "batch per step), got 64; pass --batch-size <= 8"]
    assert not (tmp_path / "run").exists()
    done = _python(["-m", "marginnce_kit.evaluate", "--checkpoint", "missing.pt"], cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("python -m marginnce_kit.evaluate: error: checkpoint: no such file 'missing.pt'")


def test_table5_checks_real_data_paths_before_any_run(fx: AVFixture, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A wrong test path must not wait until every run of the study has trained."""
    from marginnce_kit import table5

    real = ["--train-root", str(fx.root), "--train-list", str(fx.train_list), "--test-root", str(fx.root),
            "--test-list", str(fx.test_list), "--annotations", str(fx.annotations)]
    for flag, bad in (("--test-root", tmp_path / "nope"), ("--annotations", tmp_path / "nope.json")):
        argv = [*real, "--out", str(tmp_path / "out"), "--seeds", "0", "--epochs", "1", "--limit-steps", "1"]
        argv[argv.index(flag) + 1] = str(bad)
        code, _, err = _run(table5.main, argv, capsys)
        assert code == 1
        _one_error_line(err, flag, "no such")
        assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    code, _, err = _run(table5.main, [*real, "--out", str(tmp_path / "out"), "--heard-train-list", str(tmp_path / "h.txt")],
                        capsys)
    assert code == 1
    _one_error_line(err, "--heard-train-list: no such file")


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs expects an int >= 1 (training runs at a time), got 0"),
    (["--workers", "-2"], "workers: expected an int >= 0, or -1 (auto), got -2"),
    (["--seeds", "0", "-1"], "seed: expected an int >= 0, got -1"),
])
def test_table5_checks_its_own_arguments_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        argv: list[str], message: str) -> None:
    from marginnce_kit import table5

    code, out, err = _run(table5.main, ["--preset", "smoke", "--out", str(tmp_path / "out"), *argv], capsys)
    assert code == 1
    _one_error_line(err, message)
    assert "training runs to do" not in out and not (tmp_path / "out").exists()


def test_table5_workers_accepts_auto() -> None:
    from marginnce_kit import table5

    assert table5.parse_args(["--workers", "auto"]).workers == -1
    assert table5.parse_args([]).workers == 0


def test_prepare_write_clean_into_a_missing_folder(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from marginnce_kit.prepare import cli as prepare_cli

    target = tmp_path / "nodir" / "clean.txt"
    code, out, err = _run(prepare_cli.main, ["--verify", str(fx.root), "--ids", str(fx.train_list),
                                             "--write-clean", str(target)], capsys)
    assert code == 1
    _one_error_line(err, "--write-clean", "nodir", "create it first")
    assert out == "" and not target.parent.exists()  # refused before verifying anything

