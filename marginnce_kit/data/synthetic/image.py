"""Image rendering: backgrounds, textured shapes, the sounding object's box and distractors."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np

from .config import _DISTRACTOR_CANDIDATES, _SPLIT_CODE, SHAPES, SPLITS, TEXTURES, EmbeddedConfig
from .plan import (
    BoxSizeSampler,
    ClassPrototype,
    ClipPlan,
    _box_position,
    _box_size_px,
    _distractor_classes,
    _image_rng,
    _sampler,
    _sounding_box,
    instance_latent,
)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255.0


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, du: float, dv: float) -> np.ndarray:
    """Pixels that the shape touches; ``u, v`` in (-1, 1): box-normalised pixel centers (``u = -1``: left edge).

    ``du, dv``: half a pixel in these units (``1 / w``, ``1 / h`` for a ``w x h`` box). A pixel
    is in the shape when the shape holds at the pixel's point nearest to the shape (e.g.
    ``|u| - du, |v| - dv`` for shapes that shrink away from the center), so every shape,
    which reaches the four sides of its box in the continuum, also has pixels in the
    first and last row and column of the box: the box is tight.
    """
    au = np.maximum(np.abs(u) - du, 0.0)  # nearest-to-center point of the pixel
    av = np.maximum(np.abs(v) - dv, 0.0)
    if shape == "ellipse":
        return au * au + av * av <= 1.0
    if shape == "rectangle":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "triangle":  # apex at the top (v = -1), base at the bottom (v = 1)
        return au <= (np.minimum(v + dv, 1.0) + 1.0) / 2.0
    if shape == "ring":  # outer ellipse touched, inner hole (radius 0.55) judged at the pixel center
        return (au * au + av * av <= 1.0) & (u * u + v * v >= 0.55**2)
    if shape == "cross":
        return (au <= 0.34) | (av <= 0.34)
    if shape == "octagon":
        return au + av <= 1.4
    if shape == "hourglass":  # two triangles meeting at the center
        return au <= np.minimum(np.abs(v) + dv, 1.0)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _texture(texture: str, px: np.ndarray, py: np.ndarray, period: float, phase: float) -> np.ndarray:
    """1 where the primary colour shows, 0 where the darker shade shows; ``px, py`` pixel offsets."""
    if texture == "solid":
        return np.ones(np.broadcast(px, py).shape, dtype=bool)
    if texture == "horizontal stripes":
        return ((py + phase) / period) % 1.0 < 0.5
    if texture == "vertical stripes":
        return ((px + phase) / period) % 1.0 < 0.5
    if texture == "diagonal stripes":
        return ((px + py + phase) / (period * 1.4142)) % 1.0 < 0.5
    if texture == "checker":
        return (np.floor((px + phase) / period) + np.floor((py + phase) / period)) % 2 == 0
    if texture == "dots":
        dx = ((px + phase) / period) % 1.0 - 0.5
        dy = ((py + phase) / period) % 1.0 - 0.5
        return dx * dx + dy * dy > 0.3**2
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def _draw_object(
    img: np.ndarray,
    rng: np.random.Generator,
    proto: ClassPrototype,
    box: tuple[int, int, int, int],
    latent: float | None = None,
) -> np.ndarray:
    """Paint one class object filling ``box`` into ``img`` (float32 [S, S, 3], in place); returns its mask [S, S].

    ``latent``: the clip's coupling latent ``z`` (``EmbeddedConfig.instance_coupling``), which sets the
    brightness ``0.875 + 0.125 z`` and the texture period ``12 + 4 z`` px in place of their random draws (drawn
    all the same, so the rest of the stream is unchanged)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    u = (xs[None, :] - w / 2.0) / (w / 2.0)
    v = (ys[:, None] - h / 2.0) / (h / 2.0)
    local = _shape_mask(proto.shape, u, v, 1.0 / w, 1.0 / h)
    hue = proto.hue + rng.uniform(-0.015, 0.015)
    sat = rng.uniform(0.75, 1.0)
    val = rng.uniform(0.75, 1.0)
    if latent is not None:
        val = 0.875 + 0.125 * latent
    primary = _hsv(hue, sat, val)
    secondary = _hsv(hue, sat, val * 0.45)
    period = rng.uniform(8.0, 16.0)
    if latent is not None:
        period = 12.0 + 4.0 * latent
    phase = rng.uniform(0.0, period)
    pattern = _texture(proto.texture, xs[None, :], ys[:, None], period, phase)
    colour = np.where(pattern[..., None], primary, secondary)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + 0.15 * (math.cos(angle) * u + math.sin(angle) * v)
    colour = np.clip(colour * shade[..., None].astype(np.float32), 0.0, 255.0)
    region = img[y0:y1, x0:x1]
    region[local] = colour[local]
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = local
    return mask


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """Smooth desaturated colour field + low-saturation clutter shapes, float32 [S, S, 3]."""
    from PIL import Image

    grid = int(rng.integers(3, 8))
    low = rng.uniform(30.0, 225.0, size=(grid, grid, 3)).astype(np.float32)
    grey = low.mean(axis=2, keepdims=True)
    low = grey + rng.uniform(0.2, 0.45) * (low - grey)
    img = np.asarray(
        Image.fromarray(low.round().astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    ).copy()
    n_clutter = int(rng.poisson(3.0 * clutter)) if clutter > 0 else 0
    for _ in range(n_clutter):
        wp = int(rng.integers(max(4, size // 20), max(5, size // 4)))
        hp = int(rng.integers(max(4, size // 20), max(5, size // 4)))
        x0 = int(rng.integers(0, size - wp + 1))
        y0 = int(rng.integers(0, size - hp + 1))
        xs = np.arange(wp, dtype=np.float32) + 0.5
        ys = np.arange(hp, dtype=np.float32) + 0.5
        u = (xs[None, :] - wp / 2.0) / (wp / 2.0)
        v = (ys[:, None] - hp / 2.0) / (hp / 2.0)
        local = _shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], u, v, 1.0 / wp, 1.0 / hp)
        colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        img[y0 : y0 + hp, x0 : x0 + wp][local] = colour
    return img


def _least_overlap_box(
    rng: np.random.Generator,
    wp: int,
    hp: int,
    size: int,
    centre_bias: float,
    occupied: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    xs = _box_position(rng, wp, size, centre_bias, _DISTRACTOR_CANDIDATES)
    ys = _box_position(rng, hp, size, centre_bias, _DISTRACTOR_CANDIDATES)
    overlap = np.zeros(_DISTRACTOR_CANDIDATES, dtype=np.int64)
    for bx0, by0, bx1, by1 in occupied:
        ix = np.clip(np.minimum(xs + wp, bx1) - np.maximum(xs, bx0), 0, None)
        iy = np.clip(np.minimum(ys + hp, by1) - np.maximum(ys, by0), 0, None)
        overlap += ix * iy
    j = int(np.argmin(overlap))
    return int(xs[j]), int(ys[j]), int(xs[j]) + wp, int(ys[j]) + hp


def sounding_boxes(config: EmbeddedConfig, split: str) -> np.ndarray:
    """Pixel boxes ``[n, 4]`` (int64, ``x0, y0, x1, y1``, end exclusive) of every clip of ``split``.

    The same boxes the generated files carry (``int(v * image_size)`` of the stored
    corners), computed without rendering: for quick statistics of a configuration.
    """
    if not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig, got {type(config).__name__}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = {"train": config.num_train, "test": config.num_test, "val": config.num_val}[split]
    sampler = _sampler(config)
    return np.array([_sounding_box(config, sampler, _image_rng(config, split, i)) for i in range(n)], dtype=np.int64)


def _render_image(
    config: EmbeddedConfig,
    classes: Sequence[ClassPrototype],
    sampler: BoxSizeSampler,
    clip: ClipPlan,
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    size = config.image_size
    rng = _image_rng(config, clip.split, clip.index)
    box, dist_classes = _distractor_classes(config, sampler, rng, clip.class_index, clip.group)
    distractors: list[tuple[int, tuple[int, int, int, int]]] = []
    occupied = [box]
    for c in dist_classes:
        dw, dh = _box_size_px(sampler, rng, size)
        dbox = _least_overlap_box(rng, dw, dh, size, config.centre_bias, occupied)
        occupied.append(dbox)
        distractors.append((int(c), dbox))

    img = _background(rng, size, config.clutter)
    for c, dbox in distractors:
        _draw_object(img, rng, classes[c], dbox)
    latent = instance_latent(config, clip.split, clip.index) if config.instance_coupling > 0 else None
    mask = _draw_object(img, rng, classes[clip.class_index], box, latent)
    img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)  # pixel noise, uniform on {-8, .., 8}
    return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8), box, mask, distractors
