"""AudioVisualDataset over <root>/frames + <root>/audio: items, transforms, failure accounting, collate."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torchvision")

from torch.utils.data import DataLoader  # noqa: E402

from marginnce_kit.data import (  # noqa: E402
    AudioVisualDataset,
    DataError,
    DataFailureTracker,
    FailedSample,
    augment_frame,
    collate_batch,
    gt_map,
    image_transform,
    load_annotations,
    load_image,
    load_spectrogram,
    normalize_frames,
    resize_frame,
)
from marginnce_kit.data.datasets import derive_seed  # noqa: E402
from marginnce_kit.prepare import verify_clip  # noqa: E402

FS = 16000


def _make_root(tmp_path: Path, n: int = 6, seconds: float = 2.0) -> tuple[Path, list[str]]:
    root = tmp_path / "data"
    (root / "frames").mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"clip{i:02d}_{i * 10:06d}" for i in range(n)]
    for i, cid in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (48 + i, 64, 3), dtype=np.uint8)).save(root / "frames" / f"{cid}.jpg")
        sf.write(str(root / "audio" / f"{cid}.wav"), 0.3 * rng.standard_normal(int(seconds * FS) + i), FS,
                 subtype="PCM_16")
    return root, ids


def _boxes(ids):
    return {cid: [[0.1, 0.1 + 0.05 * k, 0.6, 0.9]] for k, cid in enumerate(ids)}


def test_test_item_contents(tmp_path):
    root, ids = _make_root(tmp_path)
    ds = AudioVisualDataset(root, ids, split="test", annotations=_boxes(ids))
    assert len(ds) == 6 and ds.failures.count == 0
    item = ds[2]
    assert set(item) == {"image", "spectrogram", "id", "gt_map"}
    assert item["id"] == ids[2]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert item["spectrogram"].shape == (1, 257, 200) and item["spectrogram"].dtype == torch.float32
    assert torch.equal(item["spectrogram"], load_spectrogram(root / "audio" / f"{ids[2]}.wav"))
    assert torch.equal(item["gt_map"], torch.from_numpy(gt_map(_boxes(ids)[ids[2]], "vggss")))
    # test transform: bicubic resize to 224 x 224 + ImageNet normalisation, deterministic (resize_frame
    # against Pillow's resize, within its stated tolerance: tests/test_data_loading.py)
    resized = resize_frame(load_image(root / "frames" / f"{ids[2]}.jpg"), "test").float() / 255.0
    assert resized.shape == (3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(item["image"], (resized - mean) / std)
    assert torch.equal(ds[2]["image"], item["image"])
    assert torch.equal(ds.gt_maps()[2], item["gt_map"]) and ds.gt_maps().shape == (6, 224, 224)


def test_train_transform_is_random_crop_of_resize_246(tmp_path):
    root, ids = _make_root(tmp_path, n=2)
    ds = AudioVisualDataset(root, ids, split="train")
    assert "gt_map" not in ds[0]
    torch.manual_seed(0)
    a = ds[0]["image"]
    torch.manual_seed(0)
    b = ds[0]["image"]
    torch.manual_seed(1)
    c = ds[0]["image"]
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(a, c)
    # every draw is a 224 crop (maybe flipped) of the bicubic resize to 246, normalised (resize_frame
    # against Pillow's resize, within its stated tolerance: tests/test_data_loading.py)
    resized = resize_frame(load_image(root / "frames" / f"{ids[0]}.jpg"), "train").float() / 255.0
    h, w = resized.shape[-2:]
    assert min(h, w) == 246  # the shorter side (the fixture frames are not square)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    crops = resized.unfold(1, 224, 1).unfold(2, 224, 1)  # [3, h - 223, w - 223, 224, 224]
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        x = ds[0]["image"] * std + mean
        candidates = ((i, j, f) for f in (False, True) for i in range(h - 223) for j in range(w - 223)
                      if torch.allclose(crops[:, i, j, 0].flip(-1) if f else crops[:, i, j, 0], x[:, 0], atol=1e-5))
        hit = next((c for c in candidates  # first row matches: check the whole crop
                    if torch.allclose(crops[:, c[0], c[1]].flip(-1) if c[2] else crops[:, c[0], c[1]], x, atol=1e-5)), None)
        assert hit is not None
        flips.add(hit[2])
    assert flips == {False, True}
    # the one-callable form of the pipeline gives the same draw
    torch.manual_seed(3)
    d = ds[0]["image"]
    torch.manual_seed(3)
    with Image.open(root / "frames" / f"{ids[0]}.jpg") as im:
        assert torch.equal(image_transform("train")(im.convert("RGB")), d)


@pytest.mark.parametrize("split", ["train", "test"])
def test_uint8_frames_collate_to_the_same_images(tmp_path, split):
    """normalize=False: items carry the uint8 crop; collate_batch's batch normalisation gives the bits
    of the per-clip normalisation (the trainer and evaluator read their splits this way)."""
    root, ids = _make_root(tmp_path, n=4)
    per_clip = AudioVisualDataset(root, ids, split=split)
    batched = AudioVisualDataset(root, ids, split=split, normalize=False)
    for ds in (per_clip, batched):
        ds.set_epoch(2, seed=5)
    item = batched[1]
    assert "image" not in item and item["frame"].dtype == torch.uint8 and item["frame"].shape == (3, 224, 224)
    a = collate_batch([per_clip[i] for i in range(4)])
    b = collate_batch([batched[i] for i in range(4)])
    assert set(a) == set(b) and "frame" not in b
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["spectrogram"], b["spectrogram"])
    assert torch.equal(normalize_frames(item["frame"]), per_clip[1]["image"])
    with pytest.raises(ValueError, match="both 'image' and 'frame'"):
        collate_batch([{**item, "image": per_clip[1]["image"]}])
    with pytest.raises(ValueError, match=r"frames: expected uint8 \[3, H, W\] or \[B, 3, H, W\], got torch.float32"):
        normalize_frames(per_clip[1]["image"])
    with pytest.raises(TypeError, match="normalize must be a bool, got int"):
        AudioVisualDataset(root, ids, split=split, normalize=0)


def test_set_epoch_draws_depend_on_seed_epoch_and_clip_only(tmp_path):
    root, ids = _make_root(tmp_path, n=4)
    ds = AudioVisualDataset(root, ids, split="train")
    ds.set_epoch(1, seed=7)
    torch.manual_seed(0)
    a = [ds[i]["image"] for i in range(4)]
    torch.manual_seed(1)  # the global RNG plays no part
    b = [ds[i]["image"] for i in reversed(range(4))][::-1]  # nor does the order of the loads
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # another dataset object (as in another process) serving a subset: the same image per clip
    other = AudioVisualDataset(root, ids[2:], split="train")
    other.set_epoch(1, seed=7)
    assert torch.equal(other[0]["image"], a[2])
    # DataLoader worker processes draw the same images
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_batch)
    assert torch.equal(torch.cat([batch["image"] for batch in loader]), torch.stack(a))
    # the draw is augment_frame with the clip's generator, seeded by derive_seed(seed, "augment", epoch, id)
    g = torch.Generator().manual_seed(derive_seed(7, "augment", 1, ids[3]))
    frame3 = resize_frame(load_image(root / "frames" / f"{ids[3]}.jpg"), "train")
    assert torch.equal(augment_frame(frame3, "train", 224, generator=g), a[3])
    # another epoch or seed: other draws
    for epoch, seed in ((2, 7), (1, 8)):
        ds.set_epoch(epoch, seed)
        assert not all(torch.equal(ds[i]["image"], a[i]) for i in range(4))
    # the test split has nothing to draw
    test = AudioVisualDataset(root, ids, split="test")
    first = test[0]["image"]
    test.set_epoch(5, seed=1)
    assert torch.equal(test[0]["image"], first)
    with pytest.raises(ValueError, match="epoch: expected an int >= 0, got -1"):
        ds.set_epoch(-1, 0)
    with pytest.raises(TypeError, match="seed: expected an int, got float 1.0"):
        ds.set_epoch(0, 1.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        augment_frame(frame3, "train", 224, generator=3)


def test_derive_seed_is_fixed_across_processes_and_sessions():
    # pinned values: blake2b of the parts, not Python's per-process salted hash()
    assert derive_seed(0, "augment", 1, "clip00_000000") == 4532249944725442969
    assert derive_seed(3) == 726037514067229890
    assert derive_seed(0, "augment", 1, "a") != derive_seed(0, "augment", 2, "a")
    assert 0 <= derive_seed(2**80, "x") < 2**63
    with pytest.raises(TypeError, match="derive_seed: expected int or str parts, got float 1.5"):
        derive_seed(1.5)
    with pytest.raises(ValueError, match="derive_seed: expected at least one"):
        derive_seed()


def test_missing_files_are_reported_and_skipped(tmp_path):
    root, ids = _make_root(tmp_path, n=6)
    (root / "audio" / f"{ids[1]}.wav").unlink()
    ds = AudioVisualDataset(root, ids, split="train", max_failures=1)  # an absolute count
    assert ds.ids == [i for i in ids if i != ids[1]] and len(ds) == 5
    assert ds.failures.count == 1 and "missing audio" in ds.failures.failed[ids[1]]
    # a clip without annotation is missing too
    ds2 = AudioVisualDataset(root, ids, split="test", annotations=_boxes(ids[:5]), max_failures=2)
    assert set(ds2.failures.failed) == {ids[1], ids[5]}
    assert ds2.failures.failed[ids[5]] == "no annotation"
    # past the threshold (1% of 6 clips = 0.06): stop with the ids named
    (root / "frames" / f"{ids[4]}.jpg").unlink()
    with pytest.raises(DataError, match=rf"(?s)2 of 6 clips missing or broken.*{ids[1]}: missing audio.*{ids[4]}: missing frame"):
        AudioVisualDataset(root, ids, split="train")


def _break(root: Path, ids: list[str]) -> None:
    (root / "frames" / f"{ids[0]}.jpg").write_bytes(b"not a jpeg at all")
    sf.write(str(root / "audio" / f"{ids[3]}.wav"), np.zeros(FS), 22050)


def test_broken_files_become_sentinels_never_substitutes(tmp_path):
    root, ids = _make_root(tmp_path, n=6)
    _break(root, ids)
    ds = AudioVisualDataset(root, ids, split="test", max_failures=2)
    bad_img, bad_wav = ds[0], ds[3]
    assert isinstance(bad_img, FailedSample) and bad_img.id == ids[0]
    assert isinstance(bad_wav, FailedSample)
    # the acceptance rule's reasons, word for word what prepare --verify prints
    assert bad_wav.reason == "; ".join(verify_clip(root, ids[3])) == (
        "audio: expected 16000 Hz, got 22050 Hz; too short: 0.726 s of audio, the minimum is 1 s")
    assert bad_img.reason == "; ".join(verify_clip(root, ids[0]))
    assert bad_img.reason.startswith("frame does not decode: UnidentifiedImageError")
    assert ds.failures.count == 2
    ds.failures.check()  # 2 allowed
    batch = collate_batch([ds[i] for i in range(4)])
    assert batch["id"] == [ids[1], ids[2]] and batch["image"].shape == (2, 3, 224, 224)
    assert batch["spectrogram"].shape == (2, 1, 257, 200)
    assert [f.id for f in batch["failures"]] == [ids[0], ids[3]]
    assert collate_batch([ds[0], ds[3]]) is None
    # a truncated / garbage wav is a decode failure too; the third failure is one too many
    (root / "audio" / f"{ids[4]}.wav").write_bytes(b"RIFF\x00\x01garbage")
    bad = ds[4]
    assert isinstance(bad, FailedSample) and bad.id == ids[4]
    with pytest.raises(DataError, match="3 of 6"):
        ds.failures.check()


@pytest.mark.parametrize("workers", [0, 2])
def test_failures_in_loader_workers_reach_the_main_process(tmp_path, workers):
    root, ids = _make_root(tmp_path, n=6)
    _break(root, ids)
    ds = AudioVisualDataset(root, ids, split="test", max_failures=0.01)
    seen, reported = [], []
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_batch)
    for batch in loader:
        if batch is None:
            continue
        seen += batch["id"]
        reported += [f.id for f in batch["failures"]]
    assert sorted(seen) == sorted(set(ids) - {ids[0], ids[3]})
    assert sorted(reported) == [ids[0], ids[3]]
    # recorded inside the (worker) process that decoded, visible here through the shared log
    assert set(ds.failures.failed) == {ids[0], ids[3]}
    with pytest.raises(DataError, match=ids[0]):
        ds.failures.check()


def test_tracker_threshold_dedup_and_shared_log(tmp_path):
    t = DataFailureTracker(200, 0.01, name="split")
    assert t.limit == 2.0
    t.update([("a", "bad\nframe"), FailedSample("b", "x")])
    t.record("a", "again")  # counted once, first reason kept (whitespace folded)
    assert t.count == 2 and t.failed["a"] == "bad frame"
    with pytest.raises(DataError, match="split: 3 of 200 clips"):
        t.update([("c", "y")])
    assert "... and 1 more" in t.summary(limit=2)
    log = tmp_path / "f.tsv"
    main = DataFailureTracker(10, 5, log_path=log)
    worker = DataFailureTracker(10, 5, log_path=log)  # e.g. a copy in another process
    worker.record("w1", "broken wav")
    assert main.failed == {"w1": "broken wav"}
    with pytest.raises(ValueError, match="max_failures"):
        DataFailureTracker(10, 1.5)
    with pytest.raises(ValueError, match="clip_id"):
        t.record("a\tb", "x")


def test_cache_and_log_cleanup(tmp_path):
    root, ids = _make_root(tmp_path, n=2)
    ds = AudioVisualDataset(root, ids, split="test", cache=True)
    first = ds[0]
    (root / "audio" / f"{ids[0]}.wav").unlink()  # served from memory now
    assert torch.equal(ds[0]["spectrogram"], first["spectrogram"])
    log = ds.failures.log_path
    assert log is not None and log.is_file()
    del ds, first
    gc.collect()
    assert not log.exists()


def test_constructor_errors(tmp_path):
    root, ids = _make_root(tmp_path, n=2)
    with pytest.raises(ValueError, match="split"):
        AudioVisualDataset(root, ids, split="val")
    with pytest.raises(ValueError, match="unique"):
        AudioVisualDataset(root, [ids[0], ids[0]])
    with pytest.raises(TypeError, match="ids"):
        AudioVisualDataset(root, ids[0])
    with pytest.raises(FileNotFoundError, match="frames"):
        AudioVisualDataset(tmp_path / "nowhere", ids)


def test_load_annotations_both_formats(tmp_path):
    js = tmp_path / "v.json"
    js.write_text(json.dumps([{"file": "a", "class": "c", "bbox": [[0, 0, 0.5, 0.5]]},
                              {"file": "b", "class": "c", "bbox": [[0.5, 0.5, 1, 1]]}]))
    assert load_annotations(js, "vggss", ["b", "zzz"]) == {"b": [[0.5, 0.5, 1.0, 1.0]]}
    assert set(load_annotations(js, "vggss")) == {"a", "b"}
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    (xml_dir / "77.xml").write_text(
        "<annotation><object><bbox><n/><xmin>0</xmin><ymin>0</ymin><xmax>8</xmax><ymax>8</ymax></bbox></object>"
        "</annotation>")
    assert load_annotations(xml_dir, "flickr", ["77", "88"]) == {"77": [[0, 0, 8, 8]]}
    assert load_annotations(xml_dir, "flickr") == {"77": [[0, 0, 8, 8]]}
    with pytest.raises(ValueError, match="format"):
        load_annotations(js, "coco")
