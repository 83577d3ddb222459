"""One clip rendered: image, audio and its sounding boxes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import render_audio
from .config import _SPLIT_CODE, SPLITS, SyntheticConfig
from .image import _render_image
from .plan import DatasetPlan, _sampler, plan_dataset


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


def render_clip(config: SyntheticConfig, split: str, index: int, plan: DatasetPlan | None = None) -> RenderedClip:
    """Render clip ``index`` of ``split`` in memory (its own audio; ``plan`` is recomputed when not given)."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    plan = plan_dataset(config) if plan is None else plan
    n = len(plan.clips[split])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"index must be an int in [0, {n}) for split {split!r}, got {index!r}")
    clip = plan.clips[split][index]
    image, box, mask, distractors = _render_image(config, plan.classes, _sampler(config), clip)
    audio = render_audio(config, split, index, clip.class_index)
    return RenderedClip(clip.clip_id, clip.class_index, image, audio, box, mask, distractors)
