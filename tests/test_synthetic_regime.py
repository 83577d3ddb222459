"""The embedded data's regime knobs (EmbeddedConfig: instance_coupling, faulty_source, offscreen_rate, silent_rate,
num_val; the "vggsound-like" preset): the default data set is generator 1.1's clip for clip, a same-class negative
is separable by ear under the coupling (and not without it), the same-class-negative count per anchor is the
formula's, faulty positives carry an off-screen class, and the noisy clips are where and as many as configured."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

pytest.importorskip("PIL")

from marginnce_kit.data.synthetic import (  # noqa: E402
    PRESETS,
    VGGSOUND_LIKE,
    EmbeddedConfig,
    class_prototypes,
    plan_dataset,
    render_audio,
    render_clip,
    sounding_boxes,
)
from marginnce_kit.data.synthetic.plan import instance_latent, on_screen_classes  # noqa: E402
from marginnce_kit.training.diagnostics import ClipLabels  # noqa: E402


def _labels(config: EmbeddedConfig) -> tuple[ClipLabels, list[str]]:
    plan = plan_dataset(config)
    train = plan.clips["train"]
    labels = ClipLabels({c.clip_id: c.class_index for c in train}, {c.clip_id: plan.audio_class(c) for c in train},
                        frozenset(plan.faulty_positives()))
    return labels, [c.clip_id for c in train]


def test_the_default_data_set_is_generator_1_1_clip_for_clip() -> None:
    """sha256 of the rendered pixels and samples of three clips, recorded from generator 1.1 (before the knobs):
    at their defaults the knobs draw nothing the old streams did not (so the committed tables' data is unchanged)."""
    config = PRESETS["default"]
    plan = plan_dataset(config)
    expected = {("train", 0): ("d9cf23d00b7ba675", "b76309c8b75f6912", (95, 147, 216, 222)),
                ("train", 7): ("6ba09a8e9161fe35", "0751cbc95b5708a4", (118, 9, 218, 145)),
                ("test", 3): ("cd9bbc6e00f813ec", "e7ca71f95ab7046d", (95, 2, 222, 66))}
    for (split, index), (image, audio, box) in expected.items():
        clip = render_clip(config, split, index, plan)
        assert hashlib.sha256(clip.image.tobytes()).hexdigest()[:16] == image
        assert hashlib.sha256(clip.audio.tobytes()).hexdigest()[:16] == audio
        assert clip.box_px == box
    assert plan.faulty_positives()["train_000003"] == "train_001556"
    assert not any(c.silent or c.offscreen_class is not None for c in plan.clips["train"])


def _within_class_correlation(x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """The mean over classes of the Pearson correlation of x and y among that class's clips."""
    return float(np.mean([np.corrcoef(x[classes == c], y[classes == c])[0, 1] for c in np.unique(classes)]))


def _audio_cues(config: EmbeddedConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per training clip: class, peak level and log pitch read from its wav alone, the box side and the latent."""
    plan = plan_dataset(config)
    protos = class_prototypes(config.num_classes)
    boxes = sounding_boxes(config, "train")
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / config.image_size
    classes, peak, pitch, latent = [], [], [], []
    for clip in plan.clips["train"]:
        audio = render_clip(config, "train", clip.index, plan).audio
        f0 = protos[clip.class_index].f0_hz
        spectrum = np.abs(np.fft.rfft(audio))
        freqs = np.fft.rfftfreq(audio.size, 1.0 / config.sample_rate)
        band = (freqs > 0.75 * f0) & (freqs < 1.3 * f0)  # the fundamental of this class's pitch range
        classes.append(clip.class_index)
        peak.append(float(np.max(np.abs(audio))))
        pitch.append(math.log(float(freqs[band][np.argmax(spectrum[band])])))
        latent.append(instance_latent(config, "train", clip.index))
    return np.array(classes), np.array(peak), np.array(pitch), side, np.array(latent)


@pytest.mark.parametrize("coupling", [1.0, 0.0])
def test_same_class_clips_are_separable_by_ear_only_under_the_coupling(coupling: float) -> None:
    """From the wav alone: the peak level predicts the box's size and the pitch the clip's latent (which also sets
    its texture and brightness) within a class, at correlation > 0.9 with the coupling and near 0 without."""
    config = EmbeddedConfig(num_classes=4, num_train=60, num_test=4, num_val=0, faulty_positive_rate=0.0,
                            instance_coupling=coupling)
    classes, peak, pitch, side, latent = _audio_cues(config)
    r_size = _within_class_correlation(peak, side, classes)
    r_pitch = _within_class_correlation(pitch, latent, classes)
    if coupling:
        assert r_size > 0.9 and r_pitch > 0.9, (r_size, r_pitch)
    else:
        assert abs(r_size) < 0.4 and abs(r_pitch) < 0.4, (r_size, r_pitch)


def test_the_latent_sets_the_sounding_objects_look() -> None:
    """Two clips of one class with latents far apart differ in brightness and texture period, as documented."""
    config = EmbeddedConfig(num_classes=2, num_train=40, num_test=2, num_val=0, faulty_positive_rate=0.0,
                            max_distractors=0, instance_coupling=1.0)
    plan = plan_dataset(config)
    latents = {c.index: instance_latent(config, "train", c.index) for c in plan.clips["train"] if c.class_index == 0}
    dark, bright = min(latents, key=latents.get), max(latents, key=latents.get)
    means = []
    for index in (dark, bright):
        clip = render_clip(config, "train", index, plan)
        means.append(float(clip.image[clip.object_mask].astype(float).max(axis=1).mean()))
    assert means[1] > means[0] * 1.1  # value 0.875 + 0.125 z: brighter at the larger latent


@pytest.mark.parametrize("preset, expected", [("default", 6.27), ("vggsound-like", 0.356)])
def test_same_class_negatives_per_anchor_is_the_formula(preset: str, expected: float) -> None:
    """(B - 1) P(audio class of j = image class of i) for random ordered pairs, checked against batches drawn at
    random: 6.3 for the 10-class default at batch 64, 0.36 for 160 classes (VGGSound's 309 at batch 128: 0.41)."""
    labels, ids = _labels(PRESETS[preset])
    value = labels.same_class_negatives_per_anchor(ids, 64)
    assert value == pytest.approx(expected, abs=0.01)
    rng = np.random.default_rng(0)
    image = np.array([labels.image_class[i] for i in ids])
    audio = np.array([labels.audio_class[i] for i in ids])
    counts = []
    for _ in range(300):
        b = rng.choice(len(ids), 64, replace=False)
        same = image[b][:, None] == audio[b][None, :]
        counts.append((same.sum() - np.trace(same)) / 64)
    assert np.mean(counts) == pytest.approx(value, rel=0.05)


def test_faulty_positives_carry_an_off_screen_class() -> None:
    config = EmbeddedConfig(num_classes=12, num_train=300, num_test=10, num_val=5, faulty_source="offscreen",
                            max_distractors=3, min_distractors=2)
    plan = plan_dataset(config)
    faulty = [c for c in plan.clips["train"] if c.audio_source != c.index]
    assert len(faulty) == round(0.2 * 300)
    for c in faulty:
        shown = on_screen_classes(config, "train", c.index, c.class_index, c.group)
        assert plan.audio_class(c) not in shown
    # with "group" (the default), some faulty pairs show the audio's class on screen
    group = plan_dataset(config.replace(faulty_source="group"))
    shown_any = [plan.audio_class(c) in on_screen_classes(config, "train", c.index, c.class_index, c.group)
                 for c in group.clips["train"] if c.audio_source != c.index]
    assert any(shown_any)


def test_off_screen_and_silent_clips() -> None:
    config = EmbeddedConfig(num_classes=6, num_train=200, num_test=20, num_val=10, offscreen_rate=0.1,
                            silent_rate=0.05)
    plan = plan_dataset(config)
    train = plan.clips["train"]
    faulty = {c.index for c in train if c.audio_source != c.index}
    off = [c for c in train if c.offscreen_class is not None]
    silent = [c for c in train if c.silent]
    assert len(off) == 20 and len(silent) == 10
    assert not faulty & {c.index for c in off + silent}  # disjoint sets of clips
    assert not {c.index for c in off} & {c.index for c in silent}
    for c in off:
        assert c.offscreen_class not in on_screen_classes(config, "train", c.index, c.class_index, c.group)
    for split in ("test", "val"):  # the evaluated splits are clean
        assert not any(c.silent or c.offscreen_class is not None or c.audio_source != c.index
                       for c in plan.clips[split])
    assert len(plan.clips["val"]) == 10 and all(c.clip_id.startswith("val_") for c in plan.clips["val"])
    # a silent clip's sound is the background noise alone; an off-screen one adds another class's sound
    c = silent[0]
    plain = render_audio(config, "train", c.index, c.class_index)
    quiet = render_audio(config, "train", c.index, c.class_index, silent=True)
    assert not np.array_equal(plain, quiet) and np.max(np.abs(quiet)) == pytest.approx(np.max(np.abs(plain)))
    assert plan.audio_class(c) == -1
    o = off[0]
    mixed = render_audio(config, "train", o.index, o.class_index, offscreen_class=o.offscreen_class)
    assert not np.array_equal(mixed, render_audio(config, "train", o.index, o.class_index))


def test_vggsound_like_preset_and_knob_checks() -> None:
    config = PRESETS["vggsound-like"]
    assert config.num_classes == 160 and config.instance_coupling == 1.0
    assert {k: getattr(config, k) for k in VGGSOUND_LIKE} == VGGSOUND_LIKE
    with pytest.raises(ValueError, match="faulty_source: expected one of"):
        EmbeddedConfig(faulty_source="nearby")
    with pytest.raises(ValueError, match=r"faulty_positive_rate \+ offscreen_rate \+ silent_rate: expected < 1"):
        EmbeddedConfig(faulty_positive_rate=0.5, offscreen_rate=0.3, silent_rate=0.3)
    with pytest.raises(ValueError, match="instance_coupling"):
        EmbeddedConfig(instance_coupling=1.5)
