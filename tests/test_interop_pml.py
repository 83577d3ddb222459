"""marginnce_loss.contrib.pml.MarginNTXentLoss against MarginNCE and float64 references from eq. 3.

Skipped when pytorch-metric-learning is absent, except the test of the missing-dependency message.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import normalize

import marginnce_loss.contrib.pml as contrib_pml
from marginnce_loss import MarginNCE

pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed (extra 'pml')")
from pytorch_metric_learning import distances, losses, reducers  # noqa: E402

B, D = 6, 5
MARGINS = (-0.2, 0.0, 0.3)


def _emb(seed: int, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised float64 leaves: pml's CosineSimilarity normalises them itself, the references do so explicitly."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, D, generator=g, dtype=torch.float64).requires_grad_(True)
    aud = torch.randn(n, D, generator=g, dtype=torch.float64).requires_grad_(True)
    return img, aud


def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return normalize(x, dim=1) @ normalize(y, dim=1).t()


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)


def _grads(loss: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, xs)


def test_is_a_pml_ntxent_loss() -> None:
    loss = contrib_pml.MarginNTXentLoss(margin=-0.2, temperature=0.1)
    assert isinstance(loss, losses.NTXentLoss)
    assert (loss.margin, loss.temperature) == (-0.2, 0.1)
    assert contrib_pml.MarginNTXentLoss.__module__ == "marginnce_loss.contrib.pml"
    assert "margin" in loss._record_these  # recorded like pml's own attributes


@pytest.mark.parametrize("margin", MARGINS)
def test_reference_set_equals_margin_nce(margin: float) -> None:
    """Unique labels, images as embeddings and audio as the reference set: MarginNCE on the cosine matrix.
    (``ref_labels`` a different tensor object: pml drops the diagonal pairs when ``ref_labels is labels``.)"""
    img, aud = _emb(0)
    labels = torch.arange(B)
    got = contrib_pml.MarginNTXentLoss(margin=margin, temperature=0.07)(img, labels, ref_emb=aud, ref_labels=labels.clone())
    # the same object as labels: pml takes it for self-comparison and has no positive pair left
    assert contrib_pml.MarginNTXentLoss()(img, labels, ref_emb=aud, ref_labels=labels).item() == 0.0
    want = MarginNCE(margin=margin, tau=0.07, check_inputs=False)(_cos(img, aud))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(_grads(got, img, aud), _grads(want, img, aud)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("margin", MARGINS)
def test_simclr_pairs_equal_margin_nce_with_same_modality_negatives(margin: float) -> None:
    """embeddings = [img; aud], labels = [0..B-1; 0..B-1] (pairs as pml forms them): each anchor's positive is its
    partner, its negatives the 2B - 2 others -- MarginNCE per direction with the same-modality cosines as extra
    negatives, the mean over the 2B anchors."""
    img, aud = _emb(1)
    labels = torch.arange(B).repeat(2)
    got = contrib_pml.MarginNTXentLoss(margin=margin, temperature=0.1)(torch.cat([img, aud]), labels)
    nce = MarginNCE(margin=margin, tau=0.1, check_inputs=False)
    s_ia, s_ii, s_aa = _cos(img, aud), _cos(img, img), _cos(aud, aud)
    want = (nce(s_ia, _off_diagonal(s_ii)) + nce(s_ia.t(), _off_diagonal(s_aa))) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(_grads(got, img, aud), _grads(want, img, aud)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def _eq3_reference(sim: torch.Tensor, labels: torch.Tensor, margin: float, tau: float) -> torch.Tensor:
    """Mean over positive pairs (a, p), a != p, of -log(e^{(s_ap - m)/tau} / (e^{(s_ap - m)/tau} + sum_{y_n != y_a} e^{s_an/tau}))."""
    terms = []
    for a in range(sim.shape[0]):
        negatives = torch.exp(sim[a, labels != labels[a]] / tau).sum()
        for p in range(sim.shape[0]):
            if p != a and labels[p] == labels[a]:
                pos = torch.exp((sim[a, p] - margin) / tau)
                terms.append(-torch.log(pos / (pos + negatives)))
    return torch.stack(terms).mean()


def test_repeated_labels_follow_eq3_per_positive_pair() -> None:
    img, _ = _emb(2, n=8)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    got = contrib_pml.MarginNTXentLoss(margin=-0.2, temperature=0.2)(img, labels)
    torch.testing.assert_close(got, _eq3_reference(_cos(img, img), labels, -0.2, 0.2), rtol=1e-12, atol=1e-12)


def test_distance_scores_minus_d_minus_margin() -> None:
    """A distance (is_inverted=False; LpDistance normalises by default): pml scores -d, the margin shifts it (-d_ap - m)."""
    img, aud = _emb(3)
    labels = torch.arange(B)
    loss = contrib_pml.MarginNTXentLoss(margin=-0.2, temperature=0.5, distance=distances.LpDistance())
    got = loss(img, labels, ref_emb=aud, ref_labels=labels.clone())
    want = MarginNCE(margin=-0.2, tau=0.5, check_inputs=False)(-torch.cdist(normalize(img, dim=1), normalize(aud, dim=1)))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_margin_zero_is_ntxent_and_reducers_are_pml_s() -> None:
    img, _ = _emb(4, n=8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for reducer in (None, reducers.SumReducer()):
        kw = {} if reducer is None else {"reducer": reducer}
        got = contrib_pml.MarginNTXentLoss(margin=0.0, temperature=0.3, **kw)(img, labels)
        assert torch.equal(got, losses.NTXentLoss(temperature=0.3, **kw)(img, labels))
    # no positive pair: pml's zero loss, not an error
    assert contrib_pml.MarginNTXentLoss()(img, torch.arange(8)).item() == 0.0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(margin=float("nan")), ValueError, "margin: expected a finite float"),
        (dict(margin="0.2"), TypeError, "margin"),
        (dict(temperature=0.0), ValueError, "temperature: expected a finite float > 0, got 0.0"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        contrib_pml.MarginNTXentLoss(**kwargs)


def test_pickles() -> None:
    import pickle

    loss = pickle.loads(pickle.dumps(contrib_pml.MarginNTXentLoss(margin=-0.3)))
    assert isinstance(loss, contrib_pml.MarginNTXentLoss) and loss.margin == -0.3
