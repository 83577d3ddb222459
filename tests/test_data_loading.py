"""The fast data-loading path gives the upstream pipeline's outputs within its stated tolerance.

Tolerances (the same as ``benchmarks/data_loading.py`` reports):

- ``resize_frame`` (torch's antialiased bicubic on uint8) against Pillow's ``BICUBIC`` resize, as
  torchvision's ``Resize`` runs it on a PIL image, on video-like frames: at most 2 grey levels at any
  pixel, and fewer than 1% of the pixels differ at all (measured: at most 0.6%).
- Spectrograms (``log(S + 1e-7) / 12``): computed in float32 by default, within 1e-5 of scipy's float64
  result (measured up to 4.5e-6); in float64 within 1e-7 (the final float32 cast).
- Frames stored by ``prepare --frame-size`` (``save_frame``): as close to the source frame's resize as
  the upstream loader's resize of a stored full frame (mean absolute difference), and within a
  JPEG's noise of upstream's output (mean below 3 grey levels).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

Image = pytest.importorskip("PIL.Image")
JpegImagePlugin = pytest.importorskip("PIL.JpegImagePlugin")
pytest.importorskip("torchvision")
pytest.importorskip("soundfile")
scipy_signal = pytest.importorskip("scipy.signal")

from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

from benchmarks import data_loading  # noqa: E402
from marginnce_kit.data import AudioVisualDataset, augment_frame, load_image, resize_frame  # noqa: E402
from marginnce_kit.data.acceptance import ClipRejected  # noqa: E402
from marginnce_kit.data.audio import log_spectrogram, power_spectrogram  # noqa: E402
from marginnce_kit.data.datasets import IMAGENET_MEAN, IMAGENET_STD, load_frame, resized_size  # noqa: E402
from marginnce_kit.prepare import save_frame, shrink_frame  # noqa: E402


def _jpeg_roundtrip(frame: np.ndarray, **kw) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95, **kw)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _pil_resize(im: Image.Image, split: str) -> torch.Tensor:
    size = 246 if split == "train" else [224, 224]
    return TF.pil_to_tensor(TF.resize(im, size, InterpolationMode.BICUBIC))


@pytest.mark.parametrize("height,width", [(360, 640), (360, 480), (480, 360), (240, 320), (100, 133)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_resize_frame_is_pillow_bicubic_within_tolerance(height, width, split):
    rng = np.random.default_rng(height * 7 + width)
    im = _jpeg_roundtrip(data_loading.video_like_frame(rng, height, width))
    ref = _pil_resize(im, split)
    for frame in (im, load_frame_from(im)):
        ours = resize_frame(frame, split)
        assert ours.dtype == torch.uint8 and ours.shape == ref.shape
        diff = (ours.int() - ref.int()).abs()
        assert int(diff.max()) <= 2
        assert float((diff > 0).float().mean()) < 0.01


def load_frame_from(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), size=st.integers(1, 400))
def test_resized_size_is_torchvision_resize_rule(h, w, size):
    from torchvision.transforms.functional import _compute_resized_output_size

    assert resized_size(h, w, "train", size) == tuple(_compute_resized_output_size((h, w), [int(size * 1.1)]))
    assert resized_size(h, w, "test", size) == (size, size)


def test_resize_frame_errors_and_pass_through():
    frame = torch.randint(0, 256, (3, 246, 437), dtype=torch.uint8)
    assert resize_frame(frame, "train") is frame  # already the size: untouched, no copy
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\]"):
        resize_frame(frame.float(), "train")
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\]"):
        resize_frame(frame[:1], "train")
    with pytest.raises(TypeError, match="PIL.Image or a uint8"):
        resize_frame(np.zeros((10, 10, 3), np.uint8), "train")
    with pytest.raises(ValueError, match="RGB PIL image, got mode 'L'"):
        resize_frame(Image.new("L", (10, 10)), "train")
    with pytest.raises(ValueError, match="split must be"):
        resized_size(10, 10, "val")
    with pytest.raises(ValueError, match="height: expected an int >= 1"):
        resized_size(0, 10, "train")


def test_load_frame_is_load_image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.jpg"
    Image.fromarray(data_loading.video_like_frame(rng, 60, 80)).save(path, quality=95)
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(tmp_path / "grey.jpg")
    for p in (path, tmp_path / "grey.jpg"):
        frame = load_frame(p)
        assert frame.dtype == torch.uint8 and frame.shape[0] == 3
        assert torch.equal(frame, TF.pil_to_tensor(load_image(p)))
    (tmp_path / "bad.jpg").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ClipRejected, match="frame does not decode"):
        load_frame(tmp_path / "bad.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")  # refused, as load_image does
    with pytest.raises(ClipRejected, match="unsupported colour mode"):
        load_frame(tmp_path / "deep.png")


def test_augment_frame_equals_totensor_normalize():
    frame = torch.randint(0, 256, (3, 246, 300), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    ours = augment_frame(frame, "train", 224, generator=g)
    g = torch.Generator().manual_seed(3)
    top = int(torch.randint(0, 246 - 224 + 1, (1,), generator=g))
    left = int(torch.randint(0, 300 - 224 + 1, (1,), generator=g))
    crop = frame[:, top:top + 224, left:left + 224]
    if torch.rand(1, generator=g).item() < 0.5:
        crop = crop.flip(-1)
    ref = TF.normalize(crop.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fs", [16000, 8000])
def test_cached_window_spectrogram_matches_scipy_for_any_rate(fs):
    x = np.random.default_rng(fs).standard_normal(6000)
    _, _, ref = scipy_signal.spectrogram(x, fs, nperseg=512, noverlap=274)
    for _ in range(2):  # first call builds the cached window, the second reuses it
        np.testing.assert_allclose(power_spectrogram(torch.from_numpy(x), fs).numpy(), ref, rtol=1e-9, atol=0)
    out = log_spectrogram(torch.from_numpy(x))
    assert out.dtype == torch.float32 and out.shape == (257, (6000 - 512) // 238 + 1)
    _, _, ref16 = scipy_signal.spectrogram(x, 16000, nperseg=512, noverlap=274)
    assert np.abs(out.numpy() - np.log(ref16 + 1e-7) / 12.0).max() < 1e-4


def test_float32_spectrogram_is_within_1e_5_of_scipy():
    from .test_data_audio import _signals, scipy_log_spec

    for name, x in _signals().items():
        ref = scipy_log_spec(x)
        f32 = log_spectrogram(torch.from_numpy(x)).numpy()
        f64 = log_spectrogram(torch.from_numpy(x), dtype=torch.float64).numpy()
        assert np.abs(f32 - ref).max() < 1e-5, name
        assert np.abs(f64 - ref).max() < 1e-7, name
    assert power_spectrogram(torch.zeros(600), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        power_spectrogram(torch.zeros(600), dtype=torch.float16)


def test_shrink_frame_is_pillow_resize_to_the_loader_size():
    rng = np.random.default_rng(1)
    frame = data_loading.video_like_frame(rng, 360, 640)
    small = shrink_frame(frame, 246)
    assert small.shape == (246, 437, 3)
    assert (246, 437) == resized_size(360, 640, "train")
    ref = np.asarray(TF.resize(Image.fromarray(frame), 246, InterpolationMode.BICUBIC))
    np.testing.assert_array_equal(small, ref)
    tall = data_loading.video_like_frame(rng, 300, 250)
    assert shrink_frame(tall, 200).shape == (240, 200, 3)
    assert shrink_frame(tall, 250) is tall and shrink_frame(tall, 400) is tall  # never enlarged
    with pytest.raises(ValueError, match="short_side"):
        shrink_frame(frame, 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        shrink_frame(frame.astype(np.float32), 246)


def test_stored_small_frames_are_as_close_to_the_source_as_upstream(tmp_path):
    rng = np.random.default_rng(2)
    ours_err, up_err, vs_up = [], [], []
    for k in range(3):
        source = data_loading.video_like_frame(rng)
        save_frame(source, tmp_path / f"full{k}.jpg")
        save_frame(source, tmp_path / f"small{k}.jpg", 246)
        with Image.open(tmp_path / f"small{k}.jpg") as im:
            assert im.size == (437, 246)
            assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4: chroma at full resolution
        src = torch.from_numpy(np.array(shrink_frame(source, 246))).permute(2, 0, 1).int()  # a writable copy
        up = _pil_resize(load_image(tmp_path / f"full{k}.jpg"), "train").int()
        ours = resize_frame(load_frame(tmp_path / f"small{k}.jpg"), "train").int()
        ours_err.append(float((ours - src).abs().float().mean()))
        up_err.append(float((up - src).abs().float().mean()))
        vs_up.append(float((ours - up).abs().float().mean()))
    assert np.mean(ours_err) <= np.mean(up_err)
    assert max(vs_up) < 3.0


def test_dataset_matches_the_upstream_style_item(tmp_path):
    """End to end, two VGGSound-like clips: ours on full frames within the resize tolerance of the
    upstream-style item (same crop and flip), spectrograms within the float32 cast."""
    ids = data_loading.make_clips(tmp_path, 2, stored_short_side=246)
    out = data_loading.compare_outputs(tmp_path, ids, tmp_path / "small")
    full = out["ours (full frames)"]
    assert full["image_vs_upstream"]["max_grey_levels"] <= 2.0 + 1e-3
    assert full["image_vs_upstream"]["fraction_over_1_grey_level"] == 0.0
    assert full["spectrogram_vs_upstream_max_abs"] < 1e-5
    small = out["ours (stored 246)"]
    assert small["image_vs_source"]["mean_abs"] <= out["upstream"]["image_vs_source"]["mean_abs"]
    assert small["spectrogram_vs_upstream_max_abs"] < 1e-5
    # the stored frames need no resize: the dataset serves the decoded stored pixels
    ds = AudioVisualDataset(tmp_path / "small", ids, split="train")
    assert torch.equal(ds._decoded(ids[0])[0], load_frame(tmp_path / "small" / "frames" / f"{ids[0]}.jpg"))


def test_benchmark_runs_and_writes_results(tmp_path):
    result = data_loading.main(["--clips", "2", "--items", "2", "--rounds", "1", "--out", str(tmp_path), "--name", "x"])
    assert [r["pipeline"] for r in result["pipelines"]] == ["upstream", "ours (full frames)", "ours (stored 246)"]
    assert (tmp_path / "x.json").is_file() and "| ours (stored 246) |" in (tmp_path / "x.md").read_text()


def test_prepare_frame_size_option(tmp_path):
    from marginnce_kit import prepare as P

    pytest.importorskip("av")  # write_video writes with PyAV
    from .fixtures import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip_a.mp4")  # 48 x 64 frames
    assert P.main(["--videos", str(videos), "--out", str(tmp_path / "full"), "--workers", "1", "--no-progress"]) == 0
    assert P.main(["--videos", str(videos), "--out", str(tmp_path / "small"), "--workers", "1", "--no-progress",
                   "--frame-size", "32"]) == 0
    with Image.open(tmp_path / "full" / "frames" / "clip_a.jpg") as im:
        assert im.size == (64, 48)
        full = np.asarray(im.convert("RGB"))
    with Image.open(tmp_path / "small" / "frames" / "clip_a.jpg") as im:
        assert im.size == (42, 32)  # shorter side 32, longer int(32 * 64 / 48)
        small = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(small - shrink_frame(full, 32).astype(int)).mean() < 3.0  # two JPEG encodings apart
    import json

    assert json.loads((tmp_path / "small" / "prepare_report.json").read_text())["frame_size"] == 32
    with pytest.raises(ValueError, match="frame_size"):
        P.prepare(videos, tmp_path / "bad", frame_size=0, progress=False)
    with pytest.raises(SystemExit):
        P.main(["--videos", str(videos), "--out", str(tmp_path / "x"), "--frame-size", "abc"])


class _Cycle:
    """A reference cycle standing in for a PyAV frame left in garbage (``weakref``-able)."""

    def __init__(self) -> None:
        self.me = self


def test_garbage_is_collected_before_loader_workers_fork() -> None:
    """A forked loader worker never frees this process's garbage: collected before the fork.

    Seen in this suite: a PyAV frame in a reference cycle, freed by the garbage collector inside a forked
    DataLoader worker, waited forever on swscale's slice threads (which the fork does not copy) -- a hang in
    the worker's first ``torch.manual_seed``. With workers the kit collects first; without, it need not.
    """
    import gc
    import weakref

    from marginnce_kit.training.sampler import GlobalBatchSampler
    from marginnce_kit.training.step import make_train_loader

    gc.collect()
    gc.disable()  # no collection by chance between making the cycle and the loader
    try:
        for workers, collected in ((0, False), (1, True)):
            ref = weakref.ref(_Cycle())
            assert ref() is not None
            make_train_loader(list(range(4)), GlobalBatchSampler(4, 2, seed=0), workers=workers, seed=0, epoch=0)
            assert (ref() is None) == collected, (workers, ref())
    finally:
        gc.enable()
