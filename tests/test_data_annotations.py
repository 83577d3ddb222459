"""Ground-truth maps, VGG-SS / SoundNet-Flickr annotation readers and split lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from marginnce_kit.data import (
    box_to_pixels,
    gt_map,
    load_flickr_annotations,
    load_id_list,
    load_vggss_annotations,
    parse_flickr_xml,
)

from .conftest import UPSTREAM_METADATA  # noqa: E402

META = UPSTREAM_METADATA / "ezvsl"
needs_meta = pytest.mark.skipif(not (META / "vggss.json").is_file(), reason="upstream metadata not available")


# --------------------------------------------------------------------------- VGG-SS maps


def test_vggss_single_box_hand_computed():
    # 0.1*224 = 22.4 -> 22, 0.2*224 = 44.8 -> 44, 0.5*224 = 112, 0.6*224 = 134.4 -> 134
    g = gt_map([[0.1, 0.2, 0.5, 0.6]], "vggss")
    assert g.shape == (224, 224) and g.dtype == np.float32
    assert g.sum() == (112 - 22) * (134 - 44)
    # rows are y, columns are x; start inclusive, end exclusive
    assert g[44, 22] == 1 and g[133, 111] == 1
    assert g[43, 22] == 0 and g[44, 21] == 0 and g[134, 22] == 0 and g[44, 112] == 0
    expected = np.zeros((224, 224), np.float32)
    expected[44:134, 22:112] = 1
    np.testing.assert_array_equal(g, expected)


def test_vggss_clipping_union_and_degenerate_boxes():
    assert box_to_pixels([-0.3, 0.5, 1.7, 1.0], "vggss") == (0, 112, 224, 224)
    g = gt_map([[-0.3, 0.5, 1.7, 1.0]], "vggss")
    assert g.sum() == 224 * 112 and g[112:].min() == 1
    # two overlapping boxes: union, still binary
    a, b = [0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]
    u = gt_map([a, b], "vggss")
    assert set(np.unique(u)) == {0.0, 1.0}
    assert u.sum() == 112 * 112 * 2 - 56 * 56
    # degenerate boxes (x1 <= x0, or a corner clipped to 0 as in the real file) cover nothing
    assert gt_map([[0.5, 0.5, 0.4, 0.9]], "vggss").sum() == 0
    assert gt_map([[0.2, 0.2, -2.9e16, -2.9e16]], "vggss").sum() == 0
    assert gt_map([], "vggss").sum() == 0


def test_small_size_parameter():
    g = gt_map([[0.0, 0.5, 0.5, 1.0]], "vggss", size=4)
    np.testing.assert_array_equal(g, [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])


# --------------------------------------------------------------------------- Flickr maps


def test_flickr_consensus_hand_computed():
    # 256-pixel frame -> int(224 v / 256): 128 -> 112, 64 -> 56, 192 -> 168
    g = gt_map([[0, 0, 128, 128], [64, 64, 192, 192]], "flickr")
    assert set(np.unique(g)) == {0.0, 0.5, 1.0}
    assert (g[56:112, 56:112] == 1).all()  # both annotators
    assert g[0, 0] == 0.5 and g[111, 0] == 0.5 and g[167, 167] == 0.5  # one annotator
    assert g[112, 0] == 0 and g[168, 168] == 0
    assert g.sum() == 0.5 * (112 * 112 * 2 - 56 * 56) + 0.5 * 56 * 56
    # three annotators agreeing: 1.5 -> clipped at 1
    three = gt_map([[0, 0, 256, 256]] * 3, "flickr")
    assert (three == 1).all()
    # non-multiples of 256/224: 10 -> int(8.75) = 8, 250 -> int(218.75) = 218
    assert box_to_pixels([10, 10, 250, 250], "flickr") == (8, 8, 218, 218)


def test_gt_map_input_errors():
    with pytest.raises(ValueError, match="format"):
        gt_map([[0, 0, 1, 1]], "coco")
    with pytest.raises(ValueError, match=r"boxes\[0\].*4 numbers"):
        gt_map([[0, 0, 1]], "vggss")
    with pytest.raises(TypeError, match="numbers"):
        gt_map([[0, 0, "1", 1]], "vggss")
    with pytest.raises(ValueError, match="finite"):
        gt_map([[0, 0, float("nan"), 1]], "vggss")
    with pytest.raises(ValueError, match=">= 0"):
        gt_map([[-1, 0, 10, 10]], "flickr")
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        gt_map(np.zeros((2, 3)), "vggss")


# --------------------------------------------------------------------------- Flickr XML

NAMED = """<?xml version="1.0"?>
<annotation>
  <filename>{id}.jpg</filename>
  <object>
    <bbox><name>a1</name><xmin>0</xmin><ymin>0</ymin><xmax>128</xmax><ymax>128</ymax></bbox>
    <bbox><name>a2</name><xmin>64</xmin><ymin>64</ymin><xmax>192</xmax><ymax>192</ymax></bbox>
  </object>
  <object>
    <bbox><name>a3</name><ymin>10</ymin><xmin>20</xmin><ymax>30</ymax><xmax>40</xmax></bbox>
  </object>
</annotation>
"""

POSITIONAL = """<annotation><object><bbox><id>1</id><a>1</a><b>2</b><c>3</c><d>4</d></bbox></object></annotation>"""


def test_parse_flickr_xml_named_and_positional(tmp_path):
    (tmp_path / "111.xml").write_text(NAMED.format(id="111"))
    (tmp_path / "222.xml").write_text(POSITIONAL)
    assert parse_flickr_xml(tmp_path / "111.xml") == [[0, 0, 128, 128], [64, 64, 192, 192], [20, 10, 40, 30]]
    assert parse_flickr_xml(tmp_path / "222.xml") == [[1, 2, 3, 4]]
    ann = load_flickr_annotations(tmp_path, ["111", "222"])
    assert set(ann) == {"111", "222"}
    g = gt_map(ann["111"], "flickr")
    assert g[60, 60] == 1.0 and g[0, 0] == 0.5


def test_flickr_xml_errors(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotation><object><bbox><xmin>1</xmin></bbox></object></annotation>")
    with pytest.raises(ValueError, match="xmin/ymin/xmax/ymax"):
        parse_flickr_xml(tmp_path / "bad.xml")
    (tmp_path / "nan.xml").write_text(
        "<annotation><object><bbox><n/><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bbox></object></annotation>"
    )
    with pytest.raises(ValueError, match="integer"):
        parse_flickr_xml(tmp_path / "nan.xml")
    with pytest.raises(FileNotFoundError, match="clip 'nope'"):
        load_flickr_annotations(tmp_path, ["nope"])
    assert load_flickr_annotations(tmp_path, ["nope"], missing_ok=True) == {}


# --------------------------------------------------------------------------- lists


def test_load_id_list_formats(tmp_path):
    (tmp_path / "train.txt").write_text("a_1\nb-2\n\nc_3\n")
    assert load_id_list(tmp_path / "train.txt") == ["a_1", "b-2", "c_3"]
    (tmp_path / "test.csv").write_bytes(b"123,45\r\n678,0\r\n")
    assert load_id_list(tmp_path / "test.csv") == ["123", "678"]
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="duplicate clip id 'a'"):
        load_id_list(tmp_path / "dup.txt")


@needs_meta
def test_real_lists():
    vgg = load_id_list(META / "vggss_test.csv")
    assert len(vgg) == 5158 and vgg[0] == "zpWuikVorYg_000032"
    flickr = load_id_list(META / "flickr_test.csv")
    assert len(flickr) == 249 and flickr[0] == "10000130166"  # second column dropped
    assert len(load_id_list(META / "vggss_10k.txt")) == 10000


# --------------------------------------------------------------------------- real vggss.json


def test_load_vggss_annotations_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"file": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_vggss_annotations(p)
    p.write_text(json.dumps([{"file": "x", "bbox": [[0, 0, 1, 1]]}, {"file": "x", "bbox": []}]))
    with pytest.raises(ValueError, match="duplicate clip id 'x'"):
        load_vggss_annotations(p)
    p.write_text(json.dumps([{"file": "x", "bbox": [[0, 0, 1]]}]))
    with pytest.raises(ValueError, match=r"entry 0 \(x\) bbox 0"):
        load_vggss_annotations(p)


def _pix(v: float) -> int:
    return int(min(max(v, 0.0), 1.0) * 224)


@needs_meta
def test_real_vggss_maps_against_boxes():
    ann = load_vggss_annotations(META / "vggss.json")
    assert len(ann) == 5158
    assert set(ann) == set(load_id_list(META / "vggss_test.csv"))
    assert sum(len(b) for b in ann.values()) == 5941
    n_single = n_multi = 0
    for clip_id, boxes in ann.items():
        g = gt_map(boxes, "vggss")
        area = float(g.sum())
        box_areas = [
            max(_pix(x1) - _pix(x0), 0) * max(_pix(y1) - _pix(y0), 0) for x0, y0, x1, y1 in boxes
        ]
        if len(boxes) == 1:
            n_single += 1
            assert area == box_areas[0], clip_id
            x0, y0, x1, y1 = boxes[0]
            if box_areas[0]:
                assert g[_pix(y0), _pix(x0)] == 1 and g[_pix(y1) - 1, _pix(x1) - 1] == 1, clip_id
        else:
            n_multi += 1
            assert max(box_areas) <= area <= sum(box_areas), clip_id
    assert (n_single, n_multi) == (4619, 539)
