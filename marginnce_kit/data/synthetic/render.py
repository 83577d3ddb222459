"""One clip rendered: image, audio and its sounding boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .audio import render_audio
from .config import _SPLIT_CODE, SPLITS, EmbeddedConfig
from .image import _render_image
from .plan import (
    BoxSizeSampler,
    ClipPlan,
    DatasetPlan,
    _image_rng,
    _sampler,
    _sounding_box,
    instance_latent,
    plan_dataset,
)


@dataclass
class RenderedClip:
    """One clip in memory (the clip's own audio, before any faulty-positive swap).

    ``image``: uint8 ``[S, S, 3]``; ``audio``: float32 ``[num_samples]`` in [-1, 1];
    ``box_px``: ``(x0, y0, x1, y1)`` pixel corners (end exclusive) of the sounding object;
    ``object_mask``: bool ``[S, S]``, the sounding object's visible pixels;
    ``distractors``: ``[(class index, (x0, y0, x1, y1)), ...]``.
    """

    clip_id: str
    class_index: int
    image: np.ndarray
    audio: np.ndarray
    box_px: tuple[int, int, int, int]
    object_mask: np.ndarray
    distractors: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)


def clip_audio(config: EmbeddedConfig, plan: DatasetPlan, sampler: BoxSizeSampler, clip: ClipPlan,
               own: bool = False) -> np.ndarray:
    """The audio track of ``clip``: its audio source's sound (``own``: the clip's own sound, before any
    faulty-positive swap), with the source's pitch and loudness under ``instance_coupling``, and the clip's own
    off-screen sound or silence."""
    src = clip if own else plan.clips[clip.split][clip.audio_source]
    latent = box_side = None
    if config.instance_coupling > 0:
        latent = instance_latent(config, src.split, src.index)
        x0, y0, x1, y1 = _sounding_box(config, sampler, _image_rng(config, src.split, src.index))
        box_side = math.sqrt((x1 - x0) * (y1 - y0)) / config.image_size
    return render_audio(config, clip.split, src.index, src.class_index, latent=latent, box_side=box_side,
                        silent=clip.silent, offscreen_class=clip.offscreen_class)


def render_clip(config: EmbeddedConfig, split: str, index: int, plan: DatasetPlan | None = None) -> RenderedClip:
    """Render clip ``index`` of ``split`` in memory (its own audio; ``plan`` is recomputed when not given)."""
    if not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig, got {type(config).__name__}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    plan = plan_dataset(config) if plan is None else plan
    n = len(plan.clips[split])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"index must be an int in [0, {n}) for split {split!r}, got {index!r}")
    clip = plan.clips[split][index]
    sampler = _sampler(config)
    image, box, mask, distractors = _render_image(config, plan.classes, sampler, clip)
    audio = clip_audio(config, plan, sampler, clip, own=True)
    return RenderedClip(clip.clip_id, clip.class_index, image, audio, box, mask, distractors)
