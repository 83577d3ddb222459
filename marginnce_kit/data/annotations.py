"""Ground-truth boxes, ground-truth maps and clip-id lists (the VGG-SS / SoundNet-Flickr protocol of
LVS, Chen et al. 2021: ``test.py`` of hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb and stoneMo/EZ-VSL@95ff5bf).

Ground-truth maps (``gt_map``), ``size = 224`` by default, rows = y, columns = x:

* ``"vggss"``: boxes ``[x0, y0, x1, y1]`` normalised to the image. Every corner is
  clipped to [0, 1], multiplied by ``size`` and truncated with ``int``; the box
  covers ``map[int(y0*size) : int(y1*size), int(x0*size) : int(x1*size)]``
  (start inclusive, end exclusive, exactly the numpy slice of upstream EZ-VSL /
  LVS). A box with ``x1 <= x0`` or ``y1 <= y0`` after this covers nothing (the real
  ``vggss.json`` has 18 such boxes, some with corners of -2.9e16). The map is the
  union of the boxes: 1 inside any box, 0 elsewhere.
* ``"flickr"``: boxes ``[xmin, ymin, xmax, ymax]`` in the 256 x 256 SoundNet-Flickr
  frame, one or more per annotator. Each corner becomes ``int(size * v / 256)`` and
  the box covers the same half-open slice; the per-box indicator maps are summed,
  divided by 2 and clipped at 1 (consensus map: 0, 0.5 where one annotator marked
  the pixel, 1 where two or more did).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import TextFileError, read_csv_rows, read_json

__all__ = [
    "GT_SIZE",
    "FLICKR_FRAME",
    "GT_FORMATS",
    "box_to_pixels",
    "gt_map",
    "load_vggss_annotations",
    "parse_flickr_xml",
    "load_flickr_annotations",
    "load_id_list",
]

GT_SIZE: int = 224
FLICKR_FRAME: int = 256
GT_FORMATS: tuple[str, ...] = ("vggss", "flickr")


def _as_box(box: object, where: str) -> tuple[float, float, float, float]:
    if isinstance(box, (str, bytes)) or not isinstance(box, (Sequence, np.ndarray)):
        raise TypeError(f"{where} must be a sequence of 4 numbers [x0, y0, x1, y1], got {box!r}")
    if len(box) != 4:
        raise ValueError(f"{where} must have 4 numbers [x0, y0, x1, y1], got {len(box)}: {box!r}")
    out: list[Any] = []  # the numbers as given (int or float)
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where} must contain numbers, got {v!r} in {box!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{where} must contain finite numbers, got {box!r}")
        out.append(v)
    return out[0], out[1], out[2], out[3]


def box_to_pixels(box: Sequence[float], format: str, size: int = GT_SIZE) -> tuple[int, int, int, int]:
    """Pixel corners ``(x0, y0, x1, y1)`` of one box as ``gt_map`` uses them (see module doc).

    ``"vggss"``: ``int(clip(v, 0, 1) * size)``. ``"flickr"``: ``int(size * v / 256)``;
    Flickr corners must be >= 0 (a negative corner would wrap the slice around in
    upstream's numpy code; it is an annotation error and raises ``ValueError``).
    """
    if format not in GT_FORMATS:
        raise ValueError(f"format must be one of {GT_FORMATS}, got {format!r}")
    vals = _as_box(box, "box")
    if format == "vggss":
        return tuple(int(min(max(float(v), 0.0), 1.0) * size) for v in vals)  # type: ignore[return-value]
    if any(v < 0 for v in vals):
        raise ValueError(f"flickr box corners must be >= 0 (256-pixel frame), got {list(vals)}")
    return tuple(int(size * v / FLICKR_FRAME) for v in vals)  # type: ignore[return-value]


def gt_map(boxes: Iterable[Sequence[float]], format: str, size: int = GT_SIZE) -> np.ndarray:
    """Ground-truth map ``[size, size]`` (float32, rows = y) of a clip's boxes.

    ``"vggss"``: ``union_b 1[y0_b <= r < y1_b and x0_b <= c < x1_b]`` (binary).
    ``"flickr"``: ``min(1, sum_b 1[...] / 2)`` (values 0, 0.5, 1).
    Pixel corners from ``box_to_pixels``. An empty box list gives an all-zero map.
    """
    if format not in GT_FORMATS:
        raise ValueError(f"format must be one of {GT_FORMATS}, got {format!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(boxes, np.ndarray):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes array must have shape [B, 4], got {boxes.shape}")
    elif isinstance(boxes, (str, bytes, Mapping)) or not isinstance(boxes, Iterable):
        raise TypeError(f"boxes must be a list of [x0, y0, x1, y1] boxes, got {type(boxes).__name__}")
    counts = np.zeros((size, size), dtype=np.float32)
    for i, box in enumerate(boxes):
        try:
            x0, y0, x1, y1 = box_to_pixels(box, format, size)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"boxes[{i}]: {exc}") from None
        counts[y0:y1, x0:x1] += 1.0
    if format == "vggss":
        return (counts > 0).astype(np.float32)
    return np.minimum(counts / 2.0, 1.0).astype(np.float32)


def load_vggss_annotations(path: str | Path) -> dict[str, list[list[float]]]:
    """Read ``vggss.json``: ``[{"file": id, "class": str, "bbox": [[x0, y0, x1, y1], ...]}, ...]``.

    Returns ``{id: [[x0, y0, x1, y1], ...]}`` with the raw normalised corners (not yet
    clipped; ``gt_map(boxes, "vggss")`` clips). Raises ``ValueError`` on a malformed
    entry or a duplicate id, :class:`marginnce_kit.io.TextFileError` (a ``ValueError``) on a file
    that is not UTF-8 text or not JSON; a byte-order mark and CRLF line ends are accepted.
    """
    path = Path(path)
    data = read_json(path, "annotations")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of annotation objects, got {type(data).__name__}")
    out: dict[str, list[list[float]]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "file" not in entry or "bbox" not in entry:
            raise ValueError(f"{path}: entry {i} must be an object with 'file' and 'bbox', got {entry!r}")
        clip_id = entry["file"]
        if not isinstance(clip_id, str) or not clip_id:
            raise ValueError(f"{path}: entry {i} 'file' must be a non-empty string, got {clip_id!r}")
        if clip_id in out:
            raise ValueError(f"{path}: duplicate clip id {clip_id!r} (entry {i})")
        boxes = entry["bbox"]
        if not isinstance(boxes, list):
            raise ValueError(f"{path}: entry {i} ({clip_id}) 'bbox' must be a list, got {boxes!r}")
        parsed = []
        for j, box in enumerate(boxes):
            try:
                parsed.append([float(v) for v in _as_box(box, "box")])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: entry {i} ({clip_id}) bbox {j}: {exc}") from None
        out[clip_id] = parsed
    return out


_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def parse_flickr_xml(path: str | Path) -> list[list[int]]:
    """Boxes of one SoundNet-Flickr annotation file, ``[[xmin, ymin, xmax, ymax], ...]`` (256-pixel frame).

    Format (Senocak et al. 2018; one file ``<id>.xml`` per test clip, boxes from
    several annotators; upstream EZ-VSL reads it the same way)::

        <annotation>
          <object>            <!-- any tag; every child of the root is scanned -->
            <bbox>            <!-- one box -->
              <...>           <!-- first child: not a coordinate (skipped) -->
              <xmin>int</xmin> <ymin>int</ymin> <xmax>int</xmax> <ymax>int</ymax>
            </bbox>
            ...
          </object>
          ...
        </annotation>

    Only ``bbox`` elements that are grandchildren of the root are boxes. Corners are
    taken from the children named ``xmin``, ``ymin``, ``xmax``, ``ymax`` when all four
    are present; otherwise the ``bbox`` must have exactly five children and the last
    four are ``xmin, ymin, xmax, ymax`` in that order (upstream's positional rule:
    skip the first child). Values are integers; anything else raises ``ValueError``. The XML parser
    reads a byte-order mark, CRLF line ends and the declared encoding; a file that is not XML raises
    :class:`marginnce_kit.io.TextFileError` (a ``ValueError``) naming it.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise TextFileError(f"flickr annotation {str(path)!r}: not valid XML ({e})",
                            "pass the SoundNet-Flickr annotation file of that clip") from None
    boxes: list[list[int]] = []
    for child in root:
        for elem in child:
            if elem.tag != "bbox":
                continue
            kids = list(elem)
            named = {k.tag: k for k in kids if k.tag in _CORNERS}
            if len(named) == 4:
                fields = [named[t] for t in _CORNERS]
            elif len(kids) == 5:
                fields = kids[1:]
            else:
                raise ValueError(
                    f"{path}: <bbox> #{len(boxes)} must contain xmin/ymin/xmax/ymax or exactly 5 children, "
                    f"got children {[k.tag for k in kids]}"
                )
            box = []
            for f in fields:
                text = (f.text or "").strip()
                try:
                    box.append(int(text))
                except ValueError:
                    raise ValueError(f"{path}: <{f.tag}> must hold an integer, got {text!r}") from None
            boxes.append(box)
    return boxes


def load_flickr_annotations(
    xml_dir: str | Path, ids: Iterable[str], *, missing_ok: bool = False
) -> dict[str, list[list[int]]]:
    """``{id: parse_flickr_xml(xml_dir / f"{id}.xml")}`` for every id.

    A missing file raises ``FileNotFoundError``, or is left out with ``missing_ok=True``.
    """
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise FileNotFoundError(f"flickr annotation directory not found: {xml_dir}")
    out: dict[str, list[list[int]]] = {}
    for clip_id in ids:
        path = xml_dir / f"{clip_id}.xml"
        if not path.is_file():
            if missing_ok:
                continue
            raise FileNotFoundError(f"flickr annotation for clip {clip_id!r} not found: {path}")
        out[clip_id] = parse_flickr_xml(path)
    return out


def load_id_list(path: str | Path) -> list[str]:
    """Clip ids of a split file, in file order.

    Train lists (``vggss_144k.txt``): one id per line. Test lists
    (``vggss_test.csv``, ``flickr_test.csv``): CSV, id in the first column, other
    columns ignored. Blank lines are skipped, whitespace around ids is removed; a UTF-8
    byte-order mark and CRLF line ends are accepted (:func:`marginnce_kit.io.read_text`).
    A duplicate id raises ``ValueError``; a file that is not UTF-8 text raises
    :class:`marginnce_kit.io.TextFileError` (a ``ValueError``).
    """
    path = Path(path)
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, row in enumerate(read_csv_rows(path, "id list"), start=1):
        if not row or not row[0].strip():
            continue
        clip_id = row[0].strip()
        if clip_id in seen:
            raise ValueError(f"{path}:{lineno}: duplicate clip id {clip_id!r}")
        seen.add(clip_id)
        ids.append(clip_id)
    return ids
