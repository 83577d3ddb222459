"""The evaluation CLI's reference rows (centre prior, ceiling) on the real VGG-SS annotations."""

from __future__ import annotations

import json

import pytest

from marginnce_kit import evaluate
from marginnce_kit.cli import UsageError

from .conftest import UPSTREAM_METADATA  # noqa: E402

VGGSS = UPSTREAM_METADATA / "ezvsl" / "vggss.json"


@pytest.mark.slow
@pytest.mark.skipif(not VGGSS.exists(), reason="real VGG-SS metadata not available")
def test_reference_rows_on_real_vggss(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert evaluate.main(["--reference-rows", "--annotations", str(VGGSS), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    # issue 9's figures, computed by the project: centre prior ~34.0 / 37.4, tie-free ceiling ~50.5 / 49.5
    assert rows["center prior"]["n"] == rows["ceiling"]["n"] == 5158
    assert abs(rows["center prior"]["ciou"] - 34.02) < 0.05 and abs(rows["center prior"]["auc"] - 37.44) < 0.05
    assert abs(rows["ceiling"]["ciou"] - 50.54) < 0.05 and abs(rows["ceiling"]["auc"] - 49.47) < 0.05
    assert "center prior: cIoU  34.02" in capsys.readouterr().out


def test_reference_rows_need_annotations():
    with pytest.raises(UsageError, match="give --annotations"):
        evaluate.main(["--reference-rows"])


def test_evaluate_needs_a_checkpoint():
    with pytest.raises(UsageError, match="give --checkpoint"):
        evaluate.main([])
