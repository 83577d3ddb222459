"""The explicit GPU switches of a run (issue 25), checked on the CPU where they can be: ``--loss-cuda-graphs``
(refused off CUDA in one line; the loss region it compiles keeps the model's state dict and its numbers) and
``--decode-device cuda`` (refused without a GPU in one line; its decoder and its dataset path give, run on the CPU,
the bits of the Pillow path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")

from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.cli import run_main  # noqa: E402
from marginnce_kit.data import datasets as D  # noqa: E402
from marginnce_kit.data.acceptance import ClipRejected  # noqa: E402
from marginnce_kit.data.frames import decode_jpeg_frame, load_frame  # noqa: E402
from marginnce_kit.training.accel import LOSS_REGION_MODE, compile_loss_region  # noqa: E402
from marginnce_kit.training.config import ConfigError, TrainConfig  # noqa: E402
from marginnce_kit.training.loop import build_train_model, build_train_set  # noqa: E402
from marginnce_kit.training.runtime import check_runnable, effective_config  # noqa: E402

from .fixtures import AVFixture, train_argv, train_config  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def fx(av_dataset) -> AVFixture:  # tests/conftest.py: shared with the other modules' 8-clip data set
    return av_dataset(n_train=8, n_test=4)


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


# --------------------------------------------------------------------------- --decode-device


def test_the_jpeg_decoder_of_the_gpu_path_gives_pillows_bits_on_the_cpu(fx: AVFixture, tmp_path: Path) -> None:
    for clip_id in fx.train_ids + fx.test_ids:
        got = decode_jpeg_frame(fx.frame(clip_id), "cpu")
        assert got.dtype == torch.uint8 and torch.equal(got, load_frame(fx.frame(clip_id))), clip_id
    from PIL import Image

    png = tmp_path / "x.jpg"  # Pillow reads it whatever its name; the JPEG decoder refuses it, saying so
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    assert load_frame(png).shape == (3, 8, 8)
    with pytest.raises(ClipRejected, match="frame does not decode as a JPEG on cpu"):
        decode_jpeg_frame(png, "cpu")
    with pytest.raises(ValueError, match=r"device: expected one of \('cpu', 'cuda'\), got 'tpu'"):
        decode_jpeg_frame(fx.frame(fx.train_ids[0]), "tpu")


def test_the_gpu_decode_path_of_the_dataset_gives_the_cpu_items(fx: AVFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The dataset's ``decode_device="cuda"`` branch with its decoder run on the CPU: the same items, bit for bit."""
    config = train_config(fx, cache=False)
    cpu = build_train_set(config)
    gpu_path = build_train_set(config)
    assert cpu.decode_device == gpu_path.decode_device == "cpu"
    decoded: list[str] = []

    def on_cpu(path, device):
        assert device == "cuda"
        decoded.append(str(path))
        return decode_jpeg_frame(path, "cpu")

    monkeypatch.setattr(D, "decode_jpeg_frame", on_cpu)
    gpu_path.decode_device = "cuda"
    for ds in (cpu, gpu_path):
        ds.set_epoch(1, 5)
    for i in range(len(cpu)):
        a, b = cpu[i], gpu_path[i]
        assert a["id"] == b["id"] and torch.equal(a["frame"], b["frame"]) and torch.equal(a["spectrogram"],
                                                                                          b["spectrogram"])
    assert len(decoded) == len(cpu)
    with pytest.raises(ValueError, match=r"decode_device: expected one of \('cpu', 'cuda'\), got 'gpu'"):
        D.AudioVisualDataset(fx.root, fx.train_ids, decode_device="gpu")


def test_decode_device_cuda_is_refused_where_it_cannot_run(fx: AVFixture, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"decode_device: expected 'cpu' with device 'cpu' .* got 'cuda'"):
        train_config(fx, decode_device="cuda")
    with pytest.raises(ConfigError, match=r"workers: expected 0 or auto with decode_device 'cuda' .* got 2"):
        train_config(fx, device="cuda", decode_device="cuda", workers=2)
    auto = train_config(fx, device="cuda", decode_device="cuda", workers=-1)
    assert effective_config(auto)[0].workers == 0  # --workers auto: the frames are decoded in this process
    assert TrainConfig.from_dict({}).decode_device == "cpu"
    if torch.cuda.is_available():
        check_runnable(auto)
        return
    with pytest.raises(ConfigError, match=r"^decode_device: expected 'cpu' on this machine \(CUDA is not available"):
        check_runnable(auto)
    line = _one_error_line(capsys, train_argv(fx, tmp_path / "run", "--device", "cuda", "--decode-device", "cuda",
                                              "--workers", "0"))
    assert "decode_device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'" in line
    assert "pass --decode-device cpu" in line and not (tmp_path / "run").exists()


@CUDA
def test_cuda_decoded_items_are_within_two_grey_levels_of_the_cpu_items(fx: AVFixture) -> None:
    config = train_config(fx, device="cuda", cache=False)
    cpu, gpu = build_train_set(config), build_train_set(config.replace(decode_device="cuda"))
    for ds in (cpu, gpu):
        ds.set_epoch(0, 0)
    for i in range(len(cpu)):
        a, b = cpu[i], gpu[i]
        assert b["frame"].device.type == "cuda" and torch.equal(a["spectrogram"], b["spectrogram"])
        assert (a["frame"].int() - b["frame"].cpu().int()).abs().max() <= 2  # nvJPEG's IDCT, bicubic on the GPU
