"""Drop-in replacements for the upstream loss sites (pinned commits below).

Each adapter keeps its upstream call contract, so a patch changes one call, and at
``margin=0`` returns what the upstream code returns on the same inputs.

- :mod:`marginnce_loss.adapters.ezvsl`: ``EZVSL.max_xmil_loss`` in ``model.py`` (stoneMo/EZ-VSL @ 95ff5bf).
- :mod:`marginnce_loss.adapters.lvs`: the logits of ``AVENet.forward`` in ``model.py``
  (hche11/Localizing-Visual-Sounds-the-Hard-Way @ 8fe8cbb).
- :mod:`marginnce_loss.adapters.reference`: the paper's own model (eq. 1 + eq. 3, sections 2.1-2.2),
  no public upstream.
- :func:`margin_cross_entropy`: ``F.cross_entropy(logits, arange(B))`` with a margin, for sites that
  hold logits (SLAVC, ``model.py`` @ stoneMo/SLAVC 05b429c).
"""

from . import ezvsl, lvs, reference
from ._common import margin_cross_entropy

__all__ = ["ezvsl", "lvs", "reference", "margin_cross_entropy"]
