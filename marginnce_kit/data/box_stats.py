"""Summary statistics of VGG-SS box sizes, for the synthetic dataset's box sampler.

Usage (writes only summary numbers, never the annotations themselves)::

    python -m marginnce_kit.data.box_stats /path/to/vggss.json [--out marginnce_kit/data/vggss_box_stats.json]

Per box ``b = [x0, y0, x1, y1]`` (normalised corners, clipped to [0, 1] first, as the
evaluation protocol does), with ``w = x1 - x0`` and ``h = y1 - y0``; a box with
``w <= 0`` or ``h <= 0`` after clipping is *degenerate* (it covers no pixel of the
ground-truth map) and is counted but left out of every statistic below.

Per clip, over its valid boxes:

* ``union_area_fraction``: ``mean(gt_map)``, the fraction of the 224 x 224
  ground-truth map of the evaluation protocol (``marginnce_kit.data.annotations.gt_map``,
  corners truncated to whole pixels) covered by the union of the boxes;
* ``envelope_width_fraction`` / ``envelope_height_fraction``: width and height of the
  bounding box of the union, ``max x1 - min x0`` and ``max y1 - min y0`` (equal to the
  box itself for the ~90 % of clips with one box);
* ``envelope_aspect_ratio``: their ratio ``width / height``;
* ``envelope_width_height_spearman``: Spearman rank correlation of the envelope width
  and height over clips (the synthetic sampler's Gaussian copula uses it);
* ``boxes_per_clip_histogram``: ``{number of valid boxes: number of clips}``.

Per box: ``box_width_fraction``, ``box_height_fraction``, ``box_aspect_ratio`` (``w / h``).

Every distribution is summarised by its quantiles at ``quantile_levels`` = 0, 0.05,
..., 1 (``numpy.quantile``, linear interpolation), rounded to 6 decimals.

For comparison with the synthetic proxy, ``centre_prior`` (the key keeps the committed file's
spelling) gives the protocol metrics (``marginnce_kit.protocol.summarize_cious``, percent) of the
image-independent centered Gaussian map (``marginnce_kit.protocol.center_prior_map``) on these clips, and
``protocol_ceiling`` those of perfect localisation (``protocol_ceiling``): on real
VGG-SS the centered map reaches cIoU 34.0 without looking at the data, out of a
ceiling of 50.5 (the median threshold predicts at least half the frame, so a clip
whose boxes cover less than a quarter of it can never reach cIoU 0.5).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json

__all__ = [
    "QUANTILE_LEVELS",
    "DEFAULT_STATS_PATH",
    "valid_boxes",
    "box_statistics",
    "center_prior_summary",
    "load_box_stats",
    "main",
]

#: 0, 0.05, ..., 1.0 (21 levels).
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
#: The committed statistics of the real VGG-SS test annotations (5,158 clips).
DEFAULT_STATS_PATH: Path = Path(__file__).resolve().parent / "vggss_box_stats.json"

_QUANTILE_KEYS = (
    "union_area_fraction",
    "envelope_width_fraction",
    "envelope_height_fraction",
    "envelope_aspect_ratio",
    "box_width_fraction",
    "box_height_fraction",
    "box_aspect_ratio",
)


def valid_boxes(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Clip corners to [0, 1] and drop degenerate boxes; returns float64 ``[n, 4]`` (``n`` may be 0)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [n, 4] ([[x0, y0, x1, y1], ...]), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"boxes must be finite, got {arr.tolist()}")
    arr = np.clip(arr, 0.0, 1.0)
    keep = (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])
    return arr[keep]


def _quantiles(values: Sequence[float] | np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in np.quantile(np.asarray(values, dtype=np.float64), QUANTILE_LEVELS)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties) = Pearson correlation of the ranks."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        # average the ranks of tied values
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


def box_statistics(annotations: Sequence[dict[str, Any]], size: int = 224) -> dict[str, Any]:
    """Summary statistics (module doc) of a parsed ``vggss.json`` list ``[{"file", "class", "bbox"}, ...]``."""
    from marginnce_kit.data.annotations import gt_map

    if not isinstance(annotations, Sequence) or isinstance(annotations, (str, bytes)):
        raise TypeError(f"annotations must be a list of {{'file', 'bbox'}} objects, got {type(annotations).__name__}")
    if len(annotations) == 0:
        raise ValueError("annotations is empty: no clips to summarise")
    union, env_w, env_h, box_w, box_h = [], [], [], [], []
    per_clip: Counter[int] = Counter()
    n_boxes = n_degenerate = n_empty = 0
    for i, entry in enumerate(annotations):
        if not isinstance(entry, dict) or "bbox" not in entry:
            raise ValueError(f"annotations[{i}] must be an object with a 'bbox' list, got {entry!r}")
        raw = entry["bbox"]
        boxes = valid_boxes(raw)
        n_boxes += len(raw)
        n_degenerate += len(raw) - len(boxes)
        per_clip[len(boxes)] += 1
        if len(boxes) == 0:
            n_empty += 1
            continue
        union.append(float(gt_map(boxes, "vggss", size).mean()))
        env_w.append(float(boxes[:, 2].max() - boxes[:, 0].min()))
        env_h.append(float(boxes[:, 3].max() - boxes[:, 1].min()))
        box_w.extend((boxes[:, 2] - boxes[:, 0]).tolist())
        box_h.extend((boxes[:, 3] - boxes[:, 1]).tolist())
    ew, eh = np.asarray(env_w), np.asarray(env_h)
    bw, bh = np.asarray(box_w), np.asarray(box_h)
    return {
        "description": (
            "Quantiles of VGG-SS box sizes (fractions of the frame); see marginnce_kit/data/box_stats.py. "
            "Degenerate boxes (empty after clipping to [0, 1]) are excluded."
        ),
        "num_clips": len(annotations),
        "num_boxes": n_boxes,
        "num_degenerate_boxes": n_degenerate,
        "num_clips_without_valid_box": n_empty,
        "gt_map_size": size,
        "quantile_levels": list(QUANTILE_LEVELS),
        "union_area_fraction": _quantiles(union),
        "envelope_width_fraction": _quantiles(ew),
        "envelope_height_fraction": _quantiles(eh),
        "envelope_aspect_ratio": _quantiles(ew / eh),
        "envelope_width_height_spearman": round(_spearman(ew, eh), 6),
        "box_width_fraction": _quantiles(bw),
        "box_height_fraction": _quantiles(bh),
        "box_aspect_ratio": _quantiles(bw / bh),
        "boxes_per_clip_histogram": {str(k): per_clip[k] for k in sorted(per_clip)},
    }


def center_prior_summary(boxes: Sequence[Sequence[Sequence[float]]], size: int = 224) -> dict[str, dict[str, float]]:
    """Protocol metrics (percent, ``summarize_cious``) of two references on the clips' ground truth.

    ``boxes``: one list of normalised ``[x0, y0, x1, y1]`` boxes per clip. Returns
    ``{"centre_prior": ..., "protocol_ceiling": ...}``: the fixed centered map
    (``center_prior_map``, no model at all) and the best any map can score under the
    median-threshold protocol (``protocol_ceiling``, perfect localisation).
    """
    import torch

    from marginnce_kit.data.annotations import gt_map
    from marginnce_kit.protocol import center_prior_map, ciou_per_sample, protocol_ceiling, summarize_cious

    prior = center_prior_map(size)
    center, ceiling = [], []
    for start in range(0, len(boxes), 256):  # chunks keep memory small (224 x 224 float64 maps)
        chunk = boxes[start : start + 256]
        gts = torch.from_numpy(np.stack([gt_map(b, "vggss", size) for b in chunk]))
        center.append(ciou_per_sample(prior.expand(len(chunk), size, size), gts, size))
        ceiling.append(protocol_ceiling(gts, size))

    def rounded(c: list[torch.Tensor]) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summarize_cious(torch.cat(c)).items()}

    return {"centre_prior": rounded(center), "protocol_ceiling": rounded(ceiling)}




def load_box_stats(path: str | Path | None = None) -> dict[str, Any]:
    """Read a statistics file written by ``main`` (default: the committed VGG-SS statistics) and check it.

    Raises ``ValueError`` when a quantile list is missing, has the wrong length or is not
    non-decreasing, or when a size quantile lies outside [0, 1].
    """
    p = DEFAULT_STATS_PATH if path is None else Path(path)
    stats = read_json(p, "box statistics")
    if not isinstance(stats, dict):
        raise ValueError(f"{p}: expected a JSON object, got {type(stats).__name__}")
    if stats.get("quantile_levels") != list(QUANTILE_LEVELS):
        raise ValueError(f"{p}: quantile_levels must be {list(QUANTILE_LEVELS)}, got {stats.get('quantile_levels')!r}")
    for key in _QUANTILE_KEYS:
        q = stats.get(key)
        if not isinstance(q, list) or len(q) != len(QUANTILE_LEVELS):
            raise ValueError(f"{p}: {key} must be a list of {len(QUANTILE_LEVELS)} quantiles, got {q!r}")
        a = np.asarray(q, dtype=np.float64)
        if not np.isfinite(a).all() or (np.diff(a) < 0).any():
            raise ValueError(f"{p}: {key} quantiles must be finite and non-decreasing, got {q}")
        if "aspect" not in key and (a[0] < 0 or a[-1] > 1):
            raise ValueError(f"{p}: {key} quantiles must lie in [0, 1], got {q}")
    rho = stats.get("envelope_width_height_spearman")
    if not isinstance(rho, (int, float)) or not -1.0 <= rho <= 1.0:
        raise ValueError(f"{p}: envelope_width_height_spearman must be a number in [-1, 1], got {rho!r}")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vggss_json", type=Path, help="path to a vggss.json annotation file")
    parser.add_argument("--out", type=Path, default=DEFAULT_STATS_PATH, help="where to write the statistics JSON")
    parser.add_argument(
        "--no-center-prior", "--no-centre-prior", dest="no_center_prior", action="store_true",
        help="skip the centered-map and ceiling metrics (need torch)",
    )
    args = parser.parse_args(argv)
    annotations = read_json(args.vggss_json, "vggss_json")
    stats = box_statistics(annotations)
    if not args.no_center_prior:
        stats.update(center_prior_summary([e["bbox"] for e in annotations]))
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in stats.items()) + "\n}\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({stats['num_clips']} clips, {stats['num_boxes']} boxes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
