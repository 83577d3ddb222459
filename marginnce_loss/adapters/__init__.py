"""Drop-in replacements for the upstream loss sites (SPEC section 4).

Each adapter keeps its upstream call contract, so a patch changes one call, and at
``margin=0`` returns what the upstream code returns on the same inputs.

- :mod:`marginnce_loss.adapters.ezvsl`: ``EZVSL.max_xmil_loss`` (stoneMo/EZ-VSL).
- :mod:`marginnce_loss.adapters.lvs`: the logits of ``AVENet.forward`` (hche11/Localizing-Visual-Sounds-the-Hard-Way).
- :mod:`marginnce_loss.adapters.reference`: the paper's own model (eq. 1 + eq. 3), no public upstream.
- :func:`margin_cross_entropy`: ``F.cross_entropy(logits, arange(B))`` with a margin, for sites that
  hold logits (SLAVC).
"""

from . import ezvsl, lvs, reference
from ._common import margin_cross_entropy

__all__ = ["ezvsl", "lvs", "reference", "margin_cross_entropy"]
