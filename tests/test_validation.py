"""Bad input: one test per case, each error names the argument, the expected and the received."""

from __future__ import annotations

import math

import pytest
import torch

from marginnce_loss import LocalizationMarginNCE, MarginNCE
from marginnce_loss import functional as MF
from marginnce_loss.adapters import ezvsl, lvs, reference


def feats(b=4, c=8, h=3, w=3):
    return torch.randn(b, c, h, w), torch.randn(b, c)


def test_sim_wrong_ndim():
    with pytest.raises(ValueError, match=r"sim: expected a 2-d tensor of shape \[B, B\], got 3-d shape \(2, 2, 2\)"):
        MF.margin_nce(torch.zeros(2, 2, 2))


def test_img_wrong_ndim():
    with pytest.raises(ValueError, match=r"img: expected a 4-d tensor of shape \[B, C, H, W\], got 3-d shape \(4, 8, 9\)"):
        MF.thresholded_similarity(torch.zeros(4, 8, 9), torch.zeros(4, 8))


def test_aud_wrong_ndim():
    with pytest.raises(ValueError, match=r"aud: expected a 2-d tensor of shape \[B, C\], got 4-d shape \(4, 8, 1, 1\)"):
        MF.max_similarity(torch.zeros(4, 8, 3, 3), torch.zeros(4, 8, 1, 1))


def test_non_square_sim():
    with pytest.raises(ValueError, match=r"sim: expected a square \[B, B\] matrix.*got shape \(3, 4\)"):
        MarginNCE()(torch.zeros(3, 4))


def test_batch_mismatch():
    img, _ = feats(b=4)
    with pytest.raises(ValueError, match=r"aud: expected batch size 4 to match img, got shape \(5, 8\)"):
        LocalizationMarginNCE()(img, torch.randn(5, 8))


def test_channel_mismatch():
    img, _ = feats(c=8)
    with pytest.raises(ValueError, match=r"aud: expected 8 channels to match img's C, got shape \(4, 6\)"):
        MF.thresholded_similarity(img, torch.randn(4, 6))


def test_extra_negatives_wrong_batch():
    with pytest.raises(ValueError, match=r"extra_negatives: expected shape \[3, K\].*got shape \(2, 1\)"):
        MF.margin_nce(torch.zeros(3, 3), extra_negatives=torch.zeros(2, 1))


@pytest.mark.parametrize("tau", [0.0, -0.07])
def test_tau_not_positive(tau):
    with pytest.raises(ValueError, match=rf"tau: expected a finite float > 0, got {tau}"):
        MarginNCE(tau=tau)


@pytest.mark.parametrize("tau", [math.inf, math.nan])
def test_tau_not_finite(tau):
    with pytest.raises(ValueError, match=r"tau: expected a finite float"):
        MF.margin_nce(torch.zeros(2, 2), tau=tau)


def test_beta_not_positive():
    img, aud = feats()
    with pytest.raises(ValueError, match=r"beta: expected a finite float > 0, got 0.0"):
        MF.thresholded_similarity(img, aud, beta=0.0)


@pytest.mark.parametrize("margin", [math.nan, -math.inf])
def test_margin_not_finite(margin):
    with pytest.raises(ValueError, match=r"margin: expected a finite float"):
        MarginNCE(margin=margin)


def test_unknown_reduction():
    with pytest.raises(ValueError, match=r"reduction: expected one of \('mean', 'sum', 'none'\), got 'avg'"):
        MarginNCE(reduction="avg")


def test_unknown_similarity():
    with pytest.raises(ValueError, match=r"similarity: expected one of \('thresholded', 'max'\), got 'cosine'"):
        LocalizationMarginNCE(similarity="cosine")


def test_integer_dtype():
    with pytest.raises(TypeError, match=r"sim: expected a floating-point tensor.*got dtype torch.int64"):
        MF.margin_nce(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"img: expected a floating-point tensor.*got dtype torch.int32"):
        MF.response_map(torch.zeros(2, 3, 2, 2, dtype=torch.int32), torch.zeros(2, 3))


def test_devices_differ():
    img = torch.zeros(2, 3, 2, 2, device="meta")
    with pytest.raises(ValueError, match=r"aud: expected a tensor on img's device meta, got device cpu"):
        MF.max_similarity(img, torch.zeros(2, 3))


def test_empty_batch():
    with pytest.raises(ValueError, match=r"img: expected a non-empty batch \(B >= 1\), got shape \(0, 8, 3, 3\)"):
        LocalizationMarginNCE()(torch.zeros(0, 8, 3, 3), torch.zeros(0, 8))
    with pytest.raises(ValueError, match=r"sim: expected a non-empty batch"):
        MF.margin_nce(torch.zeros(0, 0))


def test_batch_of_one_without_extra_negatives():
    with pytest.raises(ValueError, match=r"sim: expected B >= 2 .*got shape \(1, 1\); pass extra_negatives"):
        MF.margin_nce(torch.zeros(1, 1))


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"sim: expected a torch.Tensor of shape \[B, B\], got list"):
        MarginNCE()([[1.0, 0.0], [0.0, 1.0]])


def test_symmetric_not_bool():
    with pytest.raises(TypeError, match=r"symmetric: expected a bool, got int 1"):
        MarginNCE(symmetric=1)


def test_dtype_mismatch_between_img_and_aud():
    with pytest.raises(TypeError, match=r"aud: expected img's dtype torch.float32, got torch.float64"):
        MF.thresholded_similarity(torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, dtype=torch.float64))


def test_adapters_validate_their_arguments():
    img, aud = feats()
    with pytest.raises(ValueError, match=r"tau: expected a finite float > 0"):
        ezvsl.max_xmil_loss(img, aud, tau=0.0)
    with pytest.raises(ValueError, match=r"diagonal: expected one of \('upstream', 'exclude'\), got 'drop'"):
        lvs.lvs_logits(img, aud, diagonal="drop")
    with pytest.raises(ValueError, match=r"sigmoid_tau: expected a finite float > 0"):
        lvs.lvs_logits(img, aud, sigmoid_tau=-1.0)
    with pytest.raises(ValueError, match=r"aud: expected batch size 4"):
        reference.loss(img, aud[:3])
