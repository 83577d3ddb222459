"""The margin's mechanism, measured while a run trains on data whose correspondences are known (the embedded data).

Per eq. 3 of the paper the margin changes how much each anchor counts, not the direction it pulls: the gradient of
anchor ``i``'s loss with respect to its logits is ``(p_i - e_i) / tau`` with ``p_i = softmax`` of the row, so the
anchor's whole gradient scales with ``w_i = 1 - p_ii(m)`` (the probabilities of its negatives sum to that). A
negative margin lowers ``p_ii`` most where the positive is weakest, which is where the correspondence is faulty.
:class:`MechanismMeter` accumulates, over an epoch's training batches (rank-local under DDP):

* ``faulty_weight_share``: ``sum_{i faulty} w_i / sum_i w_i`` with the faulty anchors the faulty positives (clips
  whose audio is another clip's), ``faulty_anchor_share`` their share of anchors and ``faulty_weight_ratio`` the
  quotient (1: a faulty anchor counts as much as any other);
* the medians of ``S_ii`` (positives), of ``S_ij`` over same-class negatives (image ``i``'s class is audio ``j``'s)
  and over other-class negatives, in the method's similarity (eq. 1, or max-MIL for EZ-VSL);
* ``same_class_negatives_per_anchor``: their mean count, and ``mean_anchor_weight``.

For EZ-VSL (symmetric) ``w_i`` is the mean of the image-anchor and the audio-anchor weights; for LVS it is
``1 - p`` of its positive column, whose logits also hold the background hard negative
(:func:`marginnce_loss.adapters.lvs.lvs_logits`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from marginnce_loss import functional as MF
from marginnce_loss.adapters import lvs

from ..io import read_json
from ..models import TAU, ModelConfig

__all__ = ["ClipLabels", "MechanismMeter", "mechanism_terms"]


@dataclass(frozen=True)
class ClipLabels:
    """What is known of each training clip: the class its frame shows, the class of the sound it carries (-1:
    none, a silent clip) and whether its audio is another clip's (a faulty positive)."""

    image_class: Mapping[str, int]
    audio_class: Mapping[str, int]
    faulty: frozenset[str]

    @classmethod
    def from_embedded(cls, root: str | Path) -> ClipLabels | None:
        """The labels of an embedded dataset (``objects.json``), or ``None`` for a folder without one."""
        path = Path(root) / "objects.json"
        if not path.is_file() or not (Path(root) / "meta.json").is_file():
            return None
        objects = read_json(path, "embedded labels")
        image = {k: int(v["class_index"]) for k, v in objects.items()}
        audio = {k: int(v["audio_class_index"]) for k, v in objects.items()}
        faulty = frozenset(k for k, v in objects.items() if v.get("audio_source", k) != k)
        return cls(image, audio, faulty)

    def same_class_negatives_per_anchor(self, ids: Sequence[str], batch_size: int) -> float:
        """The expected number of same-class negatives of an anchor in a batch of ``batch_size`` clips drawn at
        random from ``ids``: ``(B - 1) P(audio class of j = image class of i)`` over ordered pairs ``i != j``
        (ids without labels, which a loader would count as missing, are left out)."""
        ids = [i for i in ids if i in self.image_class]
        n = len(ids)
        if n < 2:
            raise ValueError(f"ids: expected at least 2 clips, got {n}")
        image: dict[int, int] = {}
        audio: dict[int, int] = {}
        own = 0
        for i in ids:
            v, a = self.image_class[i], self.audio_class[i]
            image[v] = image.get(v, 0) + 1
            if a >= 0:
                audio[a] = audio.get(a, 0) + 1
            own += int(v == a)
        pairs = sum(c * audio.get(k, 0) for k, c in image.items()) - own
        return (batch_size - 1) * pairs / (n * (n - 1))


def mechanism_terms(config: ModelConfig, img: Tensor, aud: Tensor) -> tuple[Tensor, Tensor]:
    """``(S [B, B], w [B])``: the method's similarity matrix and each anchor's gradient weight ``1 - p_ii(m)`` for
    L2-normalised features ``img [B, C, H, W]``, ``aud [B, C]`` (float32 results, no graph)."""
    with torch.no_grad():
        img, aud = img.detach().float(), aud.detach().float()
        eye = torch.eye(img.shape[0], dtype=torch.bool, device=img.device)
        if config.model == "ezvsl":
            s = MF.max_similarity(img, aud)
            logits = (s - config.margin * eye) / TAU["ezvsl"]
            rows = logits.softmax(dim=1).diagonal()
            cols = logits.softmax(dim=0).diagonal()
            return s, 1.0 - (rows + cols) / 2.0
        s = MF.thresholded_similarity(img, aud, epsilon=config.epsilon, beta=config.beta)
        if config.model == "reference":
            logits = (s - config.margin * eye) / TAU["reference"]
            return s, 1.0 - logits.softmax(dim=1).diagonal()
        out = lvs.lvs_logits(img, aud, margin=config.margin, epsilon=config.epsilon, epsilon2=config.epsilon2,
                             beta=config.beta, tau=TAU["lvs"])
        return s, 1.0 - out.softmax(dim=1)[:, 0]


@dataclass
class MechanismMeter:
    """Accumulates the mechanism's measures over an epoch's batches (see the module docstring)."""

    labels: ClipLabels
    _w_faulty: float = 0.0
    _w_all: float = 0.0
    _n_faulty: int = 0
    _n_all: int = 0
    _same_count: int = 0
    _pos: list[float] = field(default_factory=list)
    _same: list[float] = field(default_factory=list)
    _other: list[float] = field(default_factory=list)

    def update(self, ids: Sequence[str], s: Tensor, w: Tensor) -> None:
        """One batch: clip ``ids`` (rows of ``s`` = images, columns = audio), ``s [B, B]``, ``w [B]``."""
        image = torch.tensor([self.labels.image_class.get(i, -2) for i in ids])  # unlabelled: never same-class
        audio = torch.tensor([self.labels.audio_class.get(i, -3) for i in ids])
        faulty = torch.tensor([i in self.labels.faulty for i in ids])
        s, w = s.cpu(), w.cpu()
        eye = torch.eye(len(ids), dtype=torch.bool)
        same = (image[:, None] == audio[None, :]) & ~eye
        self._w_faulty += float(w[faulty].sum())
        self._w_all += float(w.sum())
        self._n_faulty += int(faulty.sum())
        self._n_all += len(ids)
        self._same_count += int(same.sum())
        self._pos += s.diagonal().tolist()
        self._same += s[same].tolist()
        self._other += s[~same & ~eye].tolist()

    def compute(self) -> dict[str, Any]:
        """The epoch's measures (``None`` where no batch had any such pair); resets nothing."""
        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 5) if values else None

        anchor_share = self._n_faulty / self._n_all if self._n_all else None
        weight_share = self._w_faulty / self._w_all if self._w_all > 0 else None
        ratio = weight_share / anchor_share if weight_share is not None and anchor_share else None
        return {"faulty_weight_share": None if weight_share is None else round(weight_share, 5),
                "faulty_anchor_share": None if anchor_share is None else round(anchor_share, 5),
                "faulty_weight_ratio": None if ratio is None else round(ratio, 5),
                "mean_anchor_weight": round(self._w_all / self._n_all, 5) if self._n_all else None,
                "same_class_negatives_per_anchor": round(self._same_count / self._n_all, 4) if self._n_all else None,
                "median_s_pos": median(self._pos), "median_s_same_class": median(self._same),
                "median_s_other_class": median(self._other)}
