"""The paper's numbers: its Tables 4, 5 and 6 (cIoU, AUC in percent; VGGSound-144K -> VGG-SS), the
methods' display names and which (method, margin) rows each study trains."""

from __future__ import annotations

from typing import Any

from ..models import TAU

__all__ = ["METHOD_NAMES", "PAPER", "TABLE5_ROWS", "PAPER_TABLE5_ROWS", "TABLE6_ROWS", "TABLE4_RUNS", "STUDIES",
           "LOGIT_MATCHED_MARGIN", "SECONDARY_ROWS"]

METHOD_NAMES = {"lvs": "LVS", "ezvsl": "EZ-VSL (w/o OGL)", "reference": "Ours"}

#: ``PAPER[table][key] -> (cIoU, AUC)``: Tables 5 and 6 keyed ``(method, margin)``, Table 4 ``(split, method,
#: margin)``
PAPER: dict[str, dict[tuple[Any, ...], tuple[float, float]]] = {
    "table5": {
        ("lvs", 0.0): (33.99, 37.76), ("lvs", -0.2): (34.80, 38.17), ("lvs", -0.3): (35.73, 38.52),
        ("ezvsl", 0.0): (37.57, 38.70), ("ezvsl", -0.2): (38.70, 39.26),
        ("reference", 0.0): (36.93, 38.58), ("reference", -0.2): (38.25, 39.06),
    },
    "table6": {
        ("reference", 0.2): (37.05, 38.56), ("reference", 0.0): (36.93, 38.58),
        ("reference", -0.1): (37.51, 38.89), ("reference", -0.2): (38.25, 39.06),
        ("reference", -0.3): (37.65, 38.84), ("reference", -0.4): (36.93, 38.47),
    },
    # Table 4 (open set): (split, method, margin) -> (cIoU, AUC); LVS / EZ-VSL at their default loss
    "table4": {
        ("heard", "lvs", 0.0): (28.90, 36.20), ("heard", "ezvsl", 0.0): (31.86, 36.19),
        ("heard", "reference", -0.2): (36.35, 37.92), ("heard", "reference", 0.0): (34.40, 37.38),
        ("heard", "reference", 0.2): (34.83, 37.50),
        ("unheard", "lvs", 0.0): (26.30, 34.70), ("unheard", "ezvsl", 0.0): (32.66, 36.72),
        ("unheard", "reference", -0.2): (37.90, 39.17), ("unheard", "reference", 0.0): (36.74, 38.39),
        ("unheard", "reference", 0.2): (36.15, 38.44),
    },
}

#: EZ-VSL's margin with the logit shift ``m / tau`` of the reference model's m = -0.2 at its tau = 0.07:
#: -0.2 * 0.03 / 0.07 = -0.0857 at EZ-VSL's tau = 0.03 (the paper's m = -0.2 there is 6.7 logits, not 2.9)
LOGIT_MATCHED_MARGIN = -0.2 * TAU["ezvsl"] / TAU["reference"]

PAPER_TABLE5_ROWS = list(PAPER["table5"])
#: Rows the kit adds to a table beside the paper's (labelled as such): ``(method, margin) -> label``
SECONDARY_ROWS = {("ezvsl", LOGIT_MATCHED_MARGIN): "EZ-VSL (w/o OGL), logit-matched"}
TABLE5_ROWS = PAPER_TABLE5_ROWS + list(SECONDARY_ROWS)
TABLE6_ROWS = list(PAPER["table6"])
TABLE4_RUNS = [("lvs", 0.0), ("ezvsl", 0.0), ("reference", -0.2), ("reference", 0.0), ("reference", 0.2)]
STUDIES = ("table5", "table6", "table4", "noise", "negatives", "figures")
