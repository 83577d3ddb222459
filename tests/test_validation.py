"""Bad input: one test per case, each error names the argument, the expected and the received."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
import torch

from marginnce_loss import LocalizationMarginNCE, MarginNCE
from marginnce_loss import functional as MF
from marginnce_loss._validation import check_int
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
    with pytest.raises(ValueError, match=r"beta: expected a finite float > 0, got -1.0"):
        lvs.lvs_logits(img, aud, beta=-1.0)
    with pytest.raises(ValueError, match=r"aud: expected batch size 4"):
        reference.loss(img, aud[:3])



def test_lvs_sigmoid_tau_is_a_deprecated_alias_of_beta():
    img, aud = feats()
    with pytest.warns(DeprecationWarning, match=r"sigmoid_tau: deprecated alias of beta"):
        old = lvs.lvs_logits(img, aud, sigmoid_tau=0.05)
    torch.testing.assert_close(old, lvs.lvs_logits(img, aud, beta=0.05), rtol=0, atol=0)
    assert not torch.equal(old, lvs.lvs_logits(img, aud))  # the alias is read, not dropped
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"beta: expected a finite float > 0, got -1.0"):
        lvs.lvs_logits(img, aud, sigmoid_tau=-1.0)
    assert "sigmoid_tau" not in inspect.signature(lvs.lvs_logits).parameters


@pytest.mark.parametrize("how", ["keyword", "position"])
def test_lvs_beta_and_its_alias_together_are_refused(how):
    img, aud = feats()
    args, kwargs = ((img, aud, 0.0, 0.65, 0.4, 0.03), {}) if how == "position" else ((img, aud), {"beta": 0.03})
    with pytest.raises(TypeError, match=r"sigmoid_tau: expected either beta or its deprecated alias sigmoid_tau, "
                                        r"got both \(beta=0.03, sigmoid_tau=0.05\)"):
        lvs.lvs_logits(*args, sigmoid_tau=0.05, **kwargs)


# ---------------------------------------------------------------- scalars: bools, ints, reals


def test_bool_check_refuses_int_and_names_the_argument():
    with pytest.raises(TypeError, match=r"gather_distributed: expected a bool, got int 0"):
        LocalizationMarginNCE(gather_distributed=0)
    with pytest.raises(TypeError, match=r"check_inputs: expected a bool, got str 'no'"):
        MarginNCE(check_inputs="no")
    with pytest.raises(TypeError, match=r"recompute: expected a bool, got int 1"):
        MF.thresholded_similarity(*feats(), recompute=1)
    with pytest.raises(TypeError, match=r"trimap: expected a bool, got NoneType None"):
        lvs.lvs_logits(*feats(), trimap=None)


def test_int_check():
    assert check_int("n", 3, minimum=1) == 3
    with pytest.raises(TypeError, match=r"n: expected an int, got bool True"):
        check_int("n", True)
    with pytest.raises(TypeError, match=r"n: expected an int, got float 2.0"):
        check_int("n", 2.0)
    with pytest.raises(ValueError, match=r"n: expected an int >= 1, got 0"):
        check_int("n", 0, minimum=1)


@pytest.mark.parametrize(
    "margin",
    [np.float64(-0.2), np.float32(-0.25), np.int64(0), np.array(-0.2), np.array(-0.25, dtype=np.float32),
     torch.tensor(-0.2, dtype=torch.float64), torch.tensor(-0.25)],
    ids=["np.float64", "np.float32", "np.int64", "0-d float64 array", "0-d float32 array", "0-d float64 tensor",
         "0-d float32 tensor"],
)
def test_numpy_and_0d_tensor_margins_give_the_loss_of_the_float(margin):
    as_float = margin.item()
    sim = torch.rand(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    img, aud = (torch.nn.functional.normalize(x, dim=1) for x in feats())
    assert MarginNCE(margin=margin).margin == as_float and type(MarginNCE(margin=margin).margin) is float
    assert torch.equal(MarginNCE(margin=margin)(sim), MarginNCE(margin=as_float)(sim))
    assert torch.equal(MF.margin_nce(sim, margin), MF.margin_nce(sim, as_float))
    assert torch.equal(LocalizationMarginNCE(margin=margin)(img, aud), LocalizationMarginNCE(margin=as_float)(img, aud))
    schedule = LocalizationMarginNCE(margin=0.0)
    schedule.margin = margin  # a margin schedule assigns a new value each epoch
    assert torch.equal(schedule(img, aud), LocalizationMarginNCE(margin=as_float)(img, aud))


@pytest.mark.parametrize(
    "margin,kind,pattern",
    [
        ("-0.2", TypeError, r"margin: expected a finite float \(int, float, numpy scalar or 0-d array, 0-d tensor\), got str '-0.2'"),
        (True, TypeError, r"margin: expected a finite float .*got bool True"),
        (torch.tensor([-0.2]), TypeError, r"margin: expected a finite float .*got a tensor of shape \(1,\)"),
        (torch.tensor(True), TypeError, r"margin: expected a finite float .*got a 0-d tensor of dtype torch.bool"),
        (torch.tensor(-0.2, requires_grad=True), TypeError, r"margin: .*without grad .*pass margin.detach\(\)"),
        (np.array([-0.2]), TypeError, r"margin: expected a finite float .*got ndarray"),
        (np.array(True), TypeError, r"margin: expected a finite float .*got a 0-d array of dtype bool"),
        (np.float64("nan"), ValueError, r"margin: expected a finite float, got"),
        (torch.tensor(float("inf")), ValueError, r"margin: expected a finite float, got"),
    ],
    ids=["str", "bool", "1-element tensor", "bool tensor", "tensor requiring grad", "ndarray", "0-d bool array",
         "numpy nan", "tensor inf"],
)
def test_other_margins_are_refused_not_coerced(margin, kind, pattern):
    with pytest.raises(kind, match=pattern):
        MarginNCE(margin=margin)
    loss = MarginNCE()
    with pytest.raises(kind, match=pattern):
        loss.margin = margin  # the schedule's assignment is checked too
    assert loss.margin == -0.2


def test_tau_assignment_is_checked():
    loss = LocalizationMarginNCE()
    loss.tau = np.float32(0.5)
    assert loss.tau == 0.5
    with pytest.raises(ValueError, match=r"tau: expected a finite float > 0, got 0"):
        loss.tau = 0


def test_channels_last_shaped_img_is_named():
    """A [B, H, W, C] tensor passed as img: the message blames img and says how to fix it."""
    img = torch.zeros(4, 7, 7, 8)
    with pytest.raises(ValueError, match=r"img: expected shape \[B, C, H, W\] with C = 8 \(aud's C\), got shape "
                                         r"\(4, 7, 7, 8\), which looks like \[B, H, W, C\]; pass img.permute\(0, 3, 1, 2\)"):
        LocalizationMarginNCE()(img, torch.zeros(4, 8))
    # a channels-last *memory layout* of a [B, C, H, W] tensor is fine
    img, aud = (torch.nn.functional.normalize(x, dim=1) for x in feats())
    cl = img.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(LocalizationMarginNCE()(cl, aud), LocalizationMarginNCE()(img, aud))


# ---------------------------------------------------------------- the input guard of the modules


def _unit(b=4, c=8, h=3, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.nn.functional.normalize(torch.randn(b, c, h, w, generator=g), dim=1),
            torch.nn.functional.normalize(torch.randn(b, c, generator=g), dim=1))


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
def test_guard_warns_once_on_unnormalised_features(similarity):
    img, aud = _unit()
    loss = LocalizationMarginNCE(similarity)
    with pytest.warns(UserWarning, match=r"img: expected features L2-normalised over C \(dim 1.*got norms in "
                                         r"\[3(\.\d+)?, .*check_inputs=False"):
        loss(img * 3.0, aud)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked on the first call only: no second warning, no cost
        loss(img * 3.0, aud)


def test_guard_names_the_dimension_features_look_normalised_over():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(4, 8, 3, 5, generator=g), dim=3)  # normalised over W
    _, aud = _unit()
    with pytest.warns(UserWarning, match=r"img: .*it looks L2-normalised over dim 3 instead"):
        LocalizationMarginNCE()(img, aud)


def test_guard_checks_aud_and_accepts_zero_vectors():
    img, aud = _unit()
    with pytest.warns(UserWarning, match=r"aud: expected features L2-normalised over C"):
        LocalizationMarginNCE()(img, aud * 0.5)
    img[0, :, 1, 1] = 0.0  # F.normalize of a zero vector: allowed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalizationMarginNCE()(img, aud)
        LocalizationMarginNCE()(img.to(torch.bfloat16), aud.to(torch.bfloat16))  # rounding is within tolerance


def test_guard_warns_on_logits_passed_as_similarities():
    sim = torch.rand(6, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = MarginNCE(tau=0.07)
    with pytest.warns(UserWarning, match=r"sim: expected similarities in \[-1, 1\] .*got \|sim\| up to 1[0-9]\.\d+.*"
                                         r"margin_cross_entropy; pass check_inputs=False"):
        loss(sim / 0.07)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(sim / 0.07)  # once
    with pytest.warns(UserWarning, match=r"extra_negatives: expected similarities in \[-1, 1\]"):
        MarginNCE()(sim, extra_negatives=torch.full((6, 1), 3.0))


@pytest.mark.parametrize("module,args", [
    (MarginNCE, lambda: (torch.eye(3) * 14.0,)),
    (LocalizationMarginNCE, lambda: (_unit()[0] * 3.0, _unit()[1])),
], ids=["MarginNCE", "LocalizationMarginNCE"])
def test_guard_can_be_switched_off(module, args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = module(check_inputs=False)(*args())
    assert torch.isfinite(value)


def test_guard_is_silent_on_valid_input():
    img, aud = _unit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalizationMarginNCE()(img, aud)
        MarginNCE()(MF.max_similarity(img, aud))


# ---------------------------------------------------------------- documentation of the errors


def _public_callables():
    import inspect

    import marginnce_loss
    from marginnce_loss import adapters, distributed

    for name in marginnce_loss.__all__:
        obj = getattr(marginnce_loss, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj
    for module in (adapters.ezvsl, adapters.lvs, adapters.reference, adapters, distributed):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("name,obj", list(_public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_api_documents_its_errors(name, obj):
    """Every public function and class says what it raises; help(Module.forward) is the module's own text."""
    doc = obj.__doc__ or ""
    raises_nothing = name.endswith(("is_distributed", ".rank", "world_size"))  # process-group queries
    assert raises_nothing or "Raises:" in doc, f"{name}: no Raises: section"
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        forward = obj.forward.__doc__ or ""
        assert forward != torch.nn.Module.forward.__doc__ and "Raises:" in forward and "Args:" in forward, name
        assert "Args:" in doc, f"{name}: no Args: section"


# ---------------------------------------------------------------- each tensor checked once per call


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("gather", [False, True])
def test_forward_checks_each_tensor_once(monkeypatch, similarity, symmetric, gather):
    from marginnce_loss import _validation

    seen = []
    original = _validation.check_features

    def counting(name, tensor, ndim, layout):
        seen.append(name)
        return original(name, tensor, ndim, layout)

    monkeypatch.setattr(_validation, "check_features", counting)
    img, aud = _unit()
    loss = LocalizationMarginNCE(similarity, symmetric=symmetric, gather_distributed=gather)
    loss(img, aud)
    loss(img, aud)
    assert sorted(seen) == ["aud", "aud", "img", "img"]
    seen.clear()
    MarginNCE()(MF.max_similarity(img, aud), extra_negatives=torch.zeros(4, 1))
    assert sorted(seen) == ["aud", "extra_negatives", "img", "sim"]  # max_similarity's two, then the loss's two
    seen.clear()
    ezvsl.max_xmil_loss(img, aud)
    lvs.lvs_logits(img, aud)
    reference.loss(img, aud)
    assert sorted(seen) == ["aud"] * 3 + ["img"] * 3
