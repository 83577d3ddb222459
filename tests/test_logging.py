"""What a run logs and evaluation saves (issue 23): per-step loss, learning rate and gradient norm, hparams and
response-map overlays in TensorBoard (read back with tensorboard's EventAccumulator); the epoch's progress bar and
loader capped by ``--limit-steps``; ``evaluate --save-maps DIR``; a study run's TensorBoard logs under its run
folder. CPU, the tiny on-disk data set of tests/fixtures.py (small backbone, batch 4)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")
pytest.importorskip("tqdm")
pytest.importorskip("tensorboard")

from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from marginnce_kit import evaluate as evaluate_cli  # noqa: E402
from marginnce_kit.data.datasets import AudioVisualDataset  # noqa: E402
from marginnce_kit.evaluation import evaluate_model  # noqa: E402
from marginnce_kit.overlays import overlay_maps  # noqa: E402
from marginnce_kit.train import build_train_model, train  # noqa: E402
from marginnce_kit.training import step as step_module  # noqa: E402
from marginnce_kit.training.checkpoint import load_model  # noqa: E402
from marginnce_kit.training.loop import build_test_set  # noqa: E402
from marginnce_kit.training.schedule import lr_at_step  # noqa: E402
from marginnce_kit.training.step import build_optimizer, train_step  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N_TRAIN, N_TEST, BATCH = 16, 8, 4  # 4 steps an epoch


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> AVFixture:
    return make_av_dataset(tmp_path_factory.mktemp("av") / "data", n_train=N_TRAIN, n_test=N_TEST)


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_per_step_scalars_hparams_and_maps(fx: AVFixture, tmp_path: Path) -> None:
    config = train_config(fx, lr_schedule="cosine", warmup_steps=2)
    out = tmp_path / "run"
    final = train(config, out, progress=False, tensorboard=True, log_epochs=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = _events(out / "tensorboard")
    steps = N_TRAIN // BATCH * config.epochs
    loss = acc.Scalars("train/step_loss")
    assert [e.step for e in loss] == list(range(steps))
    for epoch, record in enumerate(records[: config.epochs]):  # the epoch's loss is the mean of its steps'
        values = [e.value for e in loss[epoch * record["steps"] : (epoch + 1) * record["steps"]]]
        assert sum(values) / len(values) == pytest.approx(record["loss"], rel=1e-6)
    lrs = [e.value for e in acc.Scalars("train/step_lr")]
    assert lrs == pytest.approx([lr_at_step(config, s, steps) for s in range(steps)], rel=1e-6)
    assert lrs[0] < lrs[1]  # the warm-up is visible per step
    norms = [e.value for e in acc.Scalars("train/step_grad_norm")]
    assert len(norms) == steps and all(np.isfinite(norms)) and min(norms) > 0

    # the final evaluation's overlays: one grid of the first batch's 8 maps over their frames
    (image,) = acc.Images("eval/maps")
    assert image.step == config.epochs and image.width >= 224 and image.height >= 224

    # hparams: the run's settings beside its final metrics (TensorBoard's HPARAMS tab)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["margin"].number_value == pytest.approx(-0.2)
    assert start.hparams["model"].string_value == "reference"
    assert start.hparams["batch_size"].number_value == BATCH
    assert acc.Scalars("hparam/ciou")[0].value == pytest.approx(final["eval"]["ciou"], rel=1e-6)


def test_grad_norm_is_the_total_norm_before_the_step(fx: AVFixture) -> None:
    """train_step's gradient norm: clip_grad_norm_'s total L2 norm of the same gradients, before Adam's step."""
    config = train_config(fx)
    model = build_train_model(config)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(BATCH, 3, 224, 224, generator=g)
    spec = torch.randn(BATCH, 1, 257, 200, generator=g)
    out = train_step(model, image, spec, build_optimizer(model, config), grad_norm=True)
    reference(image, spec)[0].backward()
    want = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf"))
    assert out.updated and out.grad_norm == pytest.approx(float(want), rel=1e-6)
    assert train_step(reference, image, spec, build_optimizer(reference, config)).grad_norm is None  # not asked


class _Bar:
    """A stand-in for tqdm recording its total and the count it reached."""

    made: list[_Bar] = []

    def __init__(self, iterable, total=None, **kwargs) -> None:
        self.iterable, self.total, self.n = iterable, total, 0
        _Bar.made.append(self)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("limit,expected", [(2, 2), (0, N_TRAIN // BATCH), (9, N_TRAIN // BATCH)])
def test_progress_total_and_loaded_batches_respect_limit_steps(fx: AVFixture, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, limit: int,
                                                              expected: int) -> None:
    """The bar's total is min(batches, --limit-steps) and it reaches it; no batch past the cap is loaded."""
    _Bar.made = []
    monkeypatch.setattr(step_module, "tqdm", _Bar)
    loaded: list[int] = []
    get = AudioVisualDataset.__getitem__

    def counting(self, index):
        loaded.append(index)
        return get(self, index)

    monkeypatch.setattr(AudioVisualDataset, "__getitem__", counting)
    config = train_config(fx, epochs=1, limit_steps=limit, test_list="")
    record = train(config, tmp_path / "run", progress=True, log_epochs=False, curves_every_epoch=False)
    assert record["epochs_completed"] == 1
    (bar,) = _Bar.made
    assert (bar.total, bar.n) == (expected, expected)
    assert len(loaded) == expected * BATCH


def test_evaluate_save_maps_writes_the_overlay_of_every_scored_map(fx: AVFixture, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(train_config(fx, epochs=1, limit_steps=1), out, progress=False, log_epochs=False)
    maps_dir = tmp_path / "maps"
    argv = ["--checkpoint", str(out / "checkpoint.pt"), "--save-maps", str(maps_dir), "--no-progress",
            "--out", str(tmp_path / "eval.json")]
    assert evaluate_cli.main(argv) == 0
    ids = json.loads((tmp_path / "eval.json").read_text())["eval"]["per_clip"]["id"]
    assert sorted(p.stem for p in maps_dir.glob("*.png")) == sorted(ids) and len(ids) == N_TEST

    # each PNG is the overlay of the map the evaluator scored (the same batches, recomputed here)
    model, config, _ = load_model(out / "checkpoint.pt")
    seen: dict[str, np.ndarray] = {}

    def keep(batch, maps) -> None:
        for clip_id, pixels in zip(batch["id"], overlay_maps(batch["image"], maps, batch["gt_map"])):
            seen[clip_id] = pixels

    test_set = build_test_set(config.test_root, config.test_list, config.annotations, image_size=config.image_size)
    evaluate_model(model, test_set, torch.device("cpu"), 64, 0, False, on_batch=keep)
    for clip_id in ids:
        with Image.open(maps_dir / f"{clip_id}.png") as im:
            assert im.mode == "RGB" and im.size == (224, 224)
            pixels = np.asarray(im)
        assert np.array_equal(pixels, seen[clip_id]), clip_id
        assert (pixels == (26, 230, 26)).all(axis=-1).any()  # the ground truth's outline is drawn (green)


def test_a_study_run_logs_tensorboard_under_its_run_folder(use_embedded_cache: Path, tmp_path: Path) -> None:
    """Runner(tensorboard=True): runs/<name>/tensorboard with the per-step and final scalars; the default writes none."""
    from marginnce_kit.studies.presets import embedded_data
    from marginnce_kit.studies.runner import Runner, run_name

    data = embedded_data("smoke")
    kwargs = dict(backbone="small", width=8, dim=32, batch_size=8, epochs=1, limit_steps=2, cache=True)
    for tensorboard in (False, True):
        out = tmp_path / f"tb{tensorboard}"
        Runner(out, data, kwargs, "cpu", 0, progress=False, tensorboard=tensorboard).run(
            "reference", -0.2, 0, data.train_list, [data.test_list, data.heard_test_list])
        folder = out / "runs" / run_name("reference", -0.2, 0) / "tensorboard"
        assert folder.is_dir() == tensorboard
    acc = _events(folder)
    assert [e.step for e in acc.Scalars("train/step_loss")] == [0, 1]
    assert {"train/loss", "eval/ciou", "eval/heard_test/ciou", "hparam/ciou"} <= set(acc.Tags()["scalars"])
    result = json.loads((folder.parent / "result.json").read_text())["results"]
    assert acc.Scalars("eval/ciou")[0].value == pytest.approx(result[data.test_list]["ciou"], rel=1e-6)
    assert acc.Scalars("eval/heard_test/auc")[0].value == pytest.approx(result[data.heard_test_list]["auc"], rel=1e-6)
