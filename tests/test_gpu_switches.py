"""The explicit GPU switches of a run (issue 25), checked on the CPU where they can be: ``--loss-cuda-graphs``
(refused off CUDA in one line; the loss region it compiles keeps the model's state dict and its numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")

from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402
from marginnce_kit.training.accel import LOSS_REGION_MODE, compile_loss_region  # noqa: E402
from marginnce_kit.training.config import ConfigError, TrainConfig  # noqa: E402
from marginnce_kit.training.loop import build_train_model  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_argv, train_config  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> AVFixture:
    return make_av_dataset(tmp_path_factory.mktemp("av") / "data", n_train=4, n_test=2)


def _one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(train_cli.main, argv, prog="prog")
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prog: error: ") and "Traceback" not in lines[0], lines
    return lines[0]


def test_loss_cuda_graphs_is_refused_off_cuda(fx: AVFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"loss_cuda_graphs: expected device 'cuda' .* got device 'cpu'"):
        train_config(fx, loss_cuda_graphs=True)
    line = _one_error_line(capsys, train_argv(fx, tmp_path / "run", "--loss-cuda-graphs"))
    assert "loss_cuda_graphs: expected device 'cuda'" in line and "drop --loss-cuda-graphs" in line
    assert not (tmp_path / "run").exists()
    assert TrainConfig.from_dict({}).loss_cuda_graphs is False  # off unless asked for (old config.json files too)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 224, 224, generator=g), torch.randn(4, 1, 257, 200, generator=g)


@pytest.mark.parametrize("model", ["reference", "ezvsl", "lvs"])
def test_the_compiled_loss_region_keeps_the_state_dict_and_the_numbers(fx: AVFixture, model: str) -> None:
    config = train_config(fx, model=model)
    plain = build_train_model(config, load_pretrained=False)
    region = build_train_model(config, load_pretrained=False)
    compiled: list[object] = []

    def compiler(fn):  # torch.compile's graph capture (no code generation): the region must trace
        compiled.append(fn)
        return torch.compile(fn, backend="eager", dynamic=False)

    assert compile_loss_region(region, compiler) is region and len(compiled) == 1
    assert list(region.state_dict()) == list(plain.state_dict())
    image, spec = _batch()
    loss_plain, _ = plain(image, spec)
    loss_region, _ = region(image, spec)
    loss_plain.backward()
    loss_region.backward()
    torch.testing.assert_close(loss_region, loss_plain, rtol=1e-6, atol=0)
    for (name, p), q in zip(plain.named_parameters(), region.parameters()):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_compile_loss_region_names_a_model_without_a_loss() -> None:
    with pytest.raises(TypeError, match="model.criterion: expected the loss"):
        compile_loss_region(torch.nn.Linear(2, 2))


@CUDA
def test_loss_cuda_graphs_on_cuda_match_eager(fx: AVFixture) -> None:
    config = train_config(fx, device="cuda")
    plain = build_train_model(config, device="cuda", load_pretrained=False)
    graphs = build_train_model(config.replace(loss_cuda_graphs=True), device="cuda", load_pretrained=False)
    assert LOSS_REGION_MODE == "reduce-overhead"
    image, spec = (t.cuda() for t in _batch())
    for _ in range(3):  # cudagraph trees record on a later call: compare the replays too
        loss_plain, _ = plain(image, spec)
        loss_graphs, _ = graphs(image, spec)
        torch.testing.assert_close(loss_graphs.float(), loss_plain.float(), rtol=1e-4, atol=1e-6)
