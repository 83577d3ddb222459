"""The embedded synthetic dataset (marginnce_kit/data/synthetic/) and the VGG-SS box statistics (box_stats.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from marginnce_kit.data import synthetic as syn
from marginnce_kit.data.annotations import box_to_pixels, load_id_list, load_vggss_annotations
from marginnce_kit.data.audio import load_spectrogram
from marginnce_kit.data.box_stats import (
    QUANTILE_LEVELS,
    center_prior_summary,
    load_box_stats,
)
from marginnce_kit.data.synthetic import (
    PRESETS,
    EmbeddedConfig,
    class_prototypes,
    config_hash,
    generate,
    plan_dataset,
    read_meta,
    render_audio,
    render_clip,
    sounding_boxes,
)

from .conftest import UPSTREAM_METADATA  # noqa: E402

META = UPSTREAM_METADATA / "ezvsl"
REAL_VGGSS = META / "vggss.json"

#: 100 train / 60 test clips: 20 faulty positives, 6 test clips per class; ~1 s to write.
TINY = EmbeddedConfig(num_train=100, num_test=60, num_val=0)
MINI = EmbeddedConfig(num_train=12, num_test=6, num_val=2)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "tiny", TINY)


def _objects(root: Path) -> dict:
    return json.loads((root / "objects.json").read_text(encoding="utf-8"))


def _read_wav(path: Path) -> np.ndarray:
    data, sr = sf.read(str(path), dtype="float64")
    assert sr == 16000
    return data


# --------------------------------------------------------------------------- layout


def test_layout_and_formats(tiny_root: Path) -> None:
    meta = read_meta(tiny_root)
    assert meta["version"] == syn.GENERATOR_VERSION
    assert meta["config_hash"] == config_hash(TINY)
    assert meta["seed"] == TINY.seed and meta["config"]["num_train"] == 100

    train = load_id_list(tiny_root / "train.txt")
    test = load_id_list(tiny_root / "test.csv")
    assert len(train) == 100 and len(test) == 60 and not set(train) & set(test)
    # test.csv mirrors vggss_test.csv: one id per line, CRLF line ends, no header
    raw = (tiny_root / "test.csv").read_bytes()
    assert raw == b"".join(i.encode() + b"\r\n" for i in test)
    assert (tiny_root / "train.txt").read_bytes() == b"".join(i.encode() + b"\n" for i in train)

    for clip_id in train[:10] + test:
        info = sf.info(str(tiny_root / "audio" / f"{clip_id}.wav"))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 48000, "PCM_16")
        with Image.open(tiny_root / "frames" / f"{clip_id}.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (224, 224))
    assert len(list((tiny_root / "frames").iterdir())) == 160
    assert len(list((tiny_root / "audio").iterdir())) == 160

    entries = json.loads((tiny_root / "vggss.json").read_text(encoding="utf-8"))
    assert [e["file"] for e in entries] == test
    names = {c.name for c in class_prototypes(TINY.num_classes)}
    for e in entries:
        assert set(e) == {"file", "class", "bbox"}
        assert e["class"] in names
        assert len(e["bbox"]) == 1  # one sounding box per clip
        x0, y0, x1, y1 = e["bbox"][0]
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    # the project's own reader accepts it
    assert sorted(load_vggss_annotations(tiny_root / "vggss.json")) == sorted(test)


def test_the_project_loader_serves_the_dataset(tiny_root: Path) -> None:
    from marginnce_kit.data.datasets import AudioVisualDataset, load_annotations

    ids = load_id_list(tiny_root / "test.csv")
    ann = load_annotations(tiny_root / "vggss.json", "vggss", ids)
    ds = AudioVisualDataset(tiny_root, ids, split="test", annotations=ann)
    assert len(ds) == 60 and ds.failures.count == 0
    item = ds.load(0)
    assert item["image"].shape == (3, 224, 224)
    assert item["spectrogram"].shape == (1, 257, 200)
    x0, y0, x1, y1 = _objects(tiny_root)[ids[0]]["bbox_px"][0]
    assert item["gt_map"].sum().item() == (x1 - x0) * (y1 - y0)
    assert item["gt_map"][y0:y1, x0:x1].min().item() == 1.0
    train = AudioVisualDataset(tiny_root, load_id_list(tiny_root / "train.txt"), split="train")
    assert train.load(3)["image"].shape == (3, 224, 224)


def test_stored_corners_truncate_to_the_drawn_pixels() -> None:
    # k / size * size can fall just below k (61, 115, 122 for 224); the stored float must not
    for size in (32, 100, 224, 256, 257, 300):
        for k in range(size + 1):
            x = syn.writer._pixel_to_fraction(k, size)
            assert 0.0 <= x <= 1.0 and int(x * size) == k
            assert abs(x - k / size) <= 4e-16


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tiny_root: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", TINY, workers=2)  # also: bytes do not depend on the worker count
    files = sorted(p.relative_to(tiny_root) for p in tiny_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_same_seed_same_arrays_other_seed_differs(tmp_path: Path) -> None:
    a, b = render_clip(TINY, "train", 7), render_clip(TINY, "train", 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.audio, b.audio) and a.box_px == b.box_px
    other = TINY.replace(seed=1)
    c = render_clip(other, "train", 7)
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.audio, c.audio)
    p0, p1 = plan_dataset(MINI), plan_dataset(MINI.replace(seed=1))
    assert [c.class_index for c in p0.clips["train"]] != [c.class_index for c in p1.clips["train"]]
    r0 = generate(tmp_path / "s0", MINI)
    r1 = generate(tmp_path / "s1", MINI.replace(seed=1))
    assert (r0 / "vggss.json").read_bytes() != (r1 / "vggss.json").read_bytes()


def test_files_hold_the_rendered_clip(tiny_root: Path) -> None:
    objects = _objects(tiny_root)
    for index in (0, 1, 59):
        clip = render_clip(TINY, "test", index)
        encoded = io.BytesIO()
        Image.fromarray(clip.image).save(encoded, "JPEG", quality=TINY.jpeg_quality)
        assert (tiny_root / "frames" / f"{clip.clip_id}.jpg").read_bytes() == encoded.getvalue()
        # PCM_16: libsndfile writes round(32767 x) and reads n / 32768
        assert np.abs(_read_wav(tiny_root / "audio" / f"{clip.clip_id}.wav") - clip.audio).max() < 1e-4
        assert objects[clip.clip_id]["bbox_px"] == [list(clip.box_px)]


# --------------------------------------------------------------------------- boxes and objects


def test_box_is_tight_around_the_sounding_object(tiny_root: Path) -> None:
    ann = load_vggss_annotations(tiny_root / "vggss.json")
    for index in range(TINY.num_test):
        clip = render_clip(TINY, "test", index)
        x0, y0, x1, y1 = clip.box_px
        assert box_to_pixels(ann[clip.clip_id][0], "vggss") == clip.box_px
        inside = np.zeros_like(clip.object_mask)
        inside[y0:y1, x0:x1] = True
        assert not (clip.object_mask & ~inside).any()  # no object pixel outside the box
        m = clip.object_mask[y0:y1, x0:x1]
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()  # touches all four sides
        assert m.mean() >= 0.4  # the least-filling shapes (triangle, diamond, hourglass) fill ~half the box


@settings(max_examples=200, deadline=None)
@given(
    shape=st.sampled_from(syn.SHAPES),
    w=st.integers(min_value=8, max_value=224),
    h=st.integers(min_value=8, max_value=224),
)
def test_every_shape_reaches_the_four_sides_of_its_box(shape: str, w: int, h: int) -> None:
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    u = ((xs - w / 2) / (w / 2))[None, :]
    v = ((ys - h / 2) / (h / 2))[:, None]
    m = syn.image._shape_mask(shape, u, v, 1.0 / w, 1.0 / h)
    assert m.shape == (h, w)
    assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    assert m.mean() >= 0.45  # triangle, diamond and hourglass fill half of a large box


def test_class_coloured_pixels_of_the_jpeg_lie_in_the_box(tiny_root: Path) -> None:
    """On the stored JPEG: pixels with the sounding class's hue (saturated) are inside its box.

    Distractors have other hues (>= 1/K apart, jitter +-0.015), clutter and background are
    desaturated (saturation < 0.6), so a pixel of the class hue with saturation > 0.6 belongs
    to the sounding object up to JPEG chroma bleeding at its border.
    """
    protos = class_prototypes(TINY.num_classes)
    objects = _objects(tiny_root)
    fractions = []
    for clip_id in load_id_list(tiny_root / "test.csv"):
        o = objects[clip_id]
        with Image.open(tiny_root / "frames" / f"{clip_id}.jpg") as im:
            hsv = np.asarray(im.convert("HSV"), dtype=np.float64) / 255.0
        dist = np.abs((hsv[..., 0] - protos[o["class_index"]].hue + 0.5) % 1.0 - 0.5)
        coloured = (dist < 0.03) & (hsv[..., 1] > 0.6) & (hsv[..., 2] > 0.3)
        x0, y0, x1, y1 = o["bbox_px"][0]
        assert coloured[y0:y1, x0:x1].mean() > 0.2
        fractions.append(coloured[y0:y1, x0:x1].sum() / coloured.sum())
    assert min(fractions) > 0.9 and np.mean(fractions) > 0.98


def _ks_distance(sample: np.ndarray, cdf) -> float:
    x = np.sort(np.asarray(sample, dtype=np.float64))
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def test_box_sizes_follow_the_shipped_vggss_quantiles(tiny_root: Path) -> None:
    """One-sample KS test of the sounding boxes of the default preset against the model CDF.

    Tolerance = 1.95 / sqrt(n) (KS critical value at alpha = 0.001) + the largest CDF shift
    that rounding sizes to whole pixels can cause (steepest CDF slope x 0.5 / 224) + the
    model mass below the 8-pixel floor. The area is compared with the real *union* area
    quantiles, which our single box does not model for the 10 % multi-box clips: the
    measured model gap is ~0.026 (5,000 draws), so 0.04 is allowed on top of the sampling term.
    """
    config = PRESETS["default"]
    sampler = syn.BoxSizeSampler(load_box_stats())
    boxes = np.concatenate([sounding_boxes(config, "train"), sounding_boxes(config, "test")]) / 224.0
    n = len(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    levels = np.asarray(QUANTILE_LEVELS)
    for sample, cdf, q in ((w, sampler.width_cdf, sampler.width_quantiles), (h, sampler.height_cdf, sampler.height_quantiles)):
        dq = np.diff(q)
        slope = np.max(np.diff(levels)[dq > 0] / dq[dq > 0])
        tol = 1.95 / math.sqrt(n) + slope * 0.5 / 224 + float(cdf(np.array([8 / 224]))[0])
        assert _ks_distance(sample, cdf) < tol
    stats = load_box_stats()
    area_q = np.asarray(stats["union_area_fraction"])
    d_area = _ks_distance(w * h, lambda x: syn.plan._quantile_cdf(area_q, levels, x))
    assert d_area < 1.95 / math.sqrt(n) + 0.04
    # the boxes of the files are these boxes
    tiny_boxes = sounding_boxes(TINY, "test")
    objects = _objects(tiny_root)
    assert [objects[f"test_{i:06d}"]["bbox_px"][0] for i in range(TINY.num_test)] == tiny_boxes.tolist()
    # and the small test split itself passes the same test at its own sample size
    ann = load_vggss_annotations(tiny_root / "vggss.json")
    tw = np.array([b[0][2] - b[0][0] for b in ann.values()])
    assert _ks_distance(tw, sampler.width_cdf) < 1.95 / math.sqrt(len(tw)) + 0.01


def test_position_law_follows_centre_bias() -> None:
    """Box start ``x0 = round(slack (t + 1) / 2)``, ``t = sign(u)|u|^g``: ``E|t| = 1 / (1 + g)``."""
    rng = np.random.default_rng(0)
    n, size, box = 20000, 224, 24
    for bias in (0.0, -0.5, 0.5):
        g = (1 + bias) / (1 - bias)
        t = 2.0 * syn.image._box_position(rng, box, size, bias, n) / (size - box) - 1.0
        expected = 1.0 / (1.0 + g)
        sd = math.sqrt(1.0 / (1.0 + 2.0 * g) - expected**2)  # E t^2 = 1 / (1 + 2g)
        assert abs(np.abs(t).mean() - expected) < 4 * sd / math.sqrt(n) + 1.0 / (size - box)


@pytest.mark.slow
def test_centered_prior_scores_clearly_below_real_vggss() -> None:
    """The no-model centered map must not come close to what localisation can reach.

    On real VGG-SS it scores cIoU 34.0 (ceiling 50.5, shipped statistics). With the
    default edge bias it must score at least 3 standard errors lower, while the
    protocol ceiling (set by the box sizes alone) stays the real one within sampling
    error.
    """
    config = PRESETS["default"]
    boxes = np.concatenate([sounding_boxes(config, "train"), sounding_boxes(config, "test")])
    as_fractions = [[syn.writer._box_fractions(tuple(b), 224)] for b in boxes.tolist()]
    ours = center_prior_summary(as_fractions)
    real = load_box_stats()
    n = len(boxes)
    p = ours["centre_prior"]["ciou"] / 100.0
    assert ours["centre_prior"]["ciou"] < real["centre_prior"]["ciou"] - 300.0 * math.sqrt(p * (1 - p) / n)
    c, rc = ours["protocol_ceiling"]["ciou"] / 100.0, real["protocol_ceiling"]["ciou"] / 100.0
    se = math.sqrt(c * (1 - c) / n + rc * (1 - rc) / real["protocol_ceiling"]["n"])
    assert abs(c - rc) < 3.0 * se


# --------------------------------------------------------------------------- noisy correspondences, splits


def test_faulty_positives_only_in_training(tiny_root: Path) -> None:
    meta = read_meta(tiny_root)
    faulty = meta["faulty_positives"]
    assert len(faulty) == round(TINY.faulty_positive_rate * TINY.num_train) == meta["counts"]["faulty_positives"]
    objects = _objects(tiny_root)
    heard = set(meta["heard_classes"])
    for clip_id, o in objects.items():
        if o["split"] == "test":
            assert o["audio_source"] == clip_id and clip_id not in faulty
        elif clip_id not in faulty:
            assert o["audio_source"] == clip_id
    for clip_id, source in faulty.items():
        o, s = objects[clip_id], objects[source]
        assert o["split"] == s["split"] == "train" and o["audio_source"] == source
        assert s["class_index"] != o["class_index"] == objects[clip_id]["class_index"]
        assert (s["class_index"] in heard) == (o["class_index"] in heard)  # same open-set group
        wav = _read_wav(tiny_root / "audio" / f"{clip_id}.wav")
        src_audio = render_audio(TINY, "train", int(source.split("_")[1]), s["class_index"])
        own_audio = render_audio(TINY, "train", int(clip_id.split("_")[1]), o["class_index"])
        assert np.abs(wav - src_audio).max() < 1e-4 and np.abs(wav - own_audio).max() > 0.1
    # the rate is honoured at the default size too (plan only, no rendering)
    plan = plan_dataset(PRESETS["default"])
    assert len(plan.faulty_positives()) == 400
    assert plan_dataset(MINI.replace(faulty_positive_rate=0.0)).faulty_positives() == {}


def test_open_set_split(tiny_root: Path) -> None:
    meta = read_meta(tiny_root)
    heard, unheard = set(meta["heard_classes"]), set(meta["unheard_classes"])
    assert heard and unheard and not heard & unheard
    assert heard | unheard == set(range(TINY.num_classes)) and len(heard) == TINY.num_heard == 5
    objects = _objects(tiny_root)
    train = load_id_list(tiny_root / "train.txt")
    test = load_id_list(tiny_root / "test.csv")
    heard_train = load_id_list(tiny_root / "heard_train.txt")
    heard_test = load_id_list(tiny_root / "heard_test.csv")
    unheard_test = load_id_list(tiny_root / "unheard_test.csv")
    assert heard_train == [i for i in train if objects[i]["class_index"] in heard]
    assert heard_test == [i for i in test if objects[i]["class_index"] in heard]
    assert unheard_test == [i for i in test if objects[i]["class_index"] in unheard]
    assert heard_test and unheard_test
    for clip_id in heard_train:  # heard-class training sees and hears no unheard class
        o = objects[clip_id]
        assert objects[o["audio_source"]]["class_index"] in heard
        assert all(d["class_index"] in heard for d in o["distractors"])


@pytest.mark.slow
def test_audio_class_signature_is_recoverable(tiny_root: Path) -> None:
    """Nearest class centroid of time-averaged log spectrograms (the audio front end of marginnce_kit.data.audio), clean clips only."""
    objects = _objects(tiny_root)
    faulty = read_meta(tiny_root)["faulty_positives"]

    def feature(clip_id: str) -> np.ndarray:
        return load_spectrogram(tiny_root / "audio" / f"{clip_id}.wav")[0].mean(dim=-1).numpy()

    train = [i for i in load_id_list(tiny_root / "train.txt") if i not in faulty]
    x = np.stack([feature(i) for i in train])
    y = np.array([objects[i]["class_index"] for i in train])
    centroids = np.stack([x[y == k].mean(axis=0) for k in range(TINY.num_classes)])
    test = load_id_list(tiny_root / "test.csv")
    xt = np.stack([feature(i) for i in test])
    yt = np.array([objects[i]["class_index"] for i in test])
    pred = np.argmin(((xt[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert (pred == yt).mean() > 0.9


def test_class_prototypes_are_distinct() -> None:
    for k in (2, 10, 24):
        protos = class_prototypes(k)
        assert len({(p.shape, p.texture) for p in protos}) == k
        assert len({p.name for p in protos}) == k
        f0 = np.array([p.f0_hz for p in protos])
        assert np.all(np.diff(f0) > 0) and f0[0] == pytest.approx(140.0) and f0[-1] == pytest.approx(1400.0)
        hues = np.array([p.hue for p in protos])
        assert np.min(np.diff(hues)) == pytest.approx(1.0 / k)
