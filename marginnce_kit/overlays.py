"""Response maps drawn over their frames, as upstream's visualisations show them (the map min-max normalised, a
colour map blended over the frame, the protocol's predicted region outlined, the ground-truth boxes drawn): PNGs for
``python -m marginnce_kit.evaluate --save-maps DIR`` and images for TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data.frames import IMAGENET_MEAN, IMAGENET_STD
from .io import atomic_write
from .protocol import MAP_SIZE, median_threshold_mask, normalize_map

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["overlay_maps", "save_overlays"]


def overlay_maps(images: torch.Tensor, maps: torch.Tensor, gt_maps: torch.Tensor | None = None,
                 alpha: float = 0.5) -> np.ndarray:
    """uint8 ``[N, 224, 224, 3]`` overlays of ``maps`` (raw ``[N, 224, 224]`` response maps) on ``images``
    (ImageNet-normalised ``[N, 3, h, w]``, resized to 224): the normalised map in matplotlib's ``jet`` blended at
    ``alpha``, the predicted region's edge in white and, with ``gt_maps``, the ground truth's edge in green."""
    from matplotlib import colormaps

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    frames = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    frames = torch.nn.functional.interpolate(frames, size=(MAP_SIZE, MAP_SIZE), mode="bilinear", align_corners=False)
    heat = colormaps["jet"](normalize_map(maps.detach().float().cpu()).numpy())[..., :3]
    out = (1 - alpha) * frames.permute(0, 2, 3, 1).numpy() + alpha * heat
    edges = _edges(median_threshold_mask(maps.detach().float().cpu()).numpy())
    out[edges] = 1.0
    if gt_maps is not None:
        out[_edges(gt_maps.detach().cpu().numpy() > 0)] = (0.1, 0.9, 0.1)
    return (out * 255 + 0.5).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of boolean masks ``[N, H, W]`` (inside, with a 4-neighbour outside)."""
    inner = mask.copy()
    inner[:, 1:-1, 1:-1] = (mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2]
                            & mask[:, 1:-1, 2:])
    return mask & ~inner


def save_overlays(folder: str | Path, ids: Sequence[str], images: torch.Tensor, maps: torch.Tensor,
                  gt_maps: torch.Tensor | None = None) -> list[Path]:
    """Write ``<folder>/<id>.png`` for each clip (atomically); returns the paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for clip_id, pixels in zip(ids, overlay_maps(images, maps, gt_maps)):
        path = folder / f"{clip_id}.png"
        atomic_write(path, partial(_save_png, Image.fromarray(pixels)), suffix=".png")
        paths.append(path)
    return paths


def _save_png(picture: Image.Image, path: Path) -> None:
    picture.save(path, format="PNG")
