"""The patched upstream code against the unpatched pinned code, in-process (issue 6).

Gated on ``MARGINNCE_UPSTREAM_{EZVSL,LVS,SLAVC,FNAC}`` (see ``tests/patch_upstreams.py``; skipped,
naming the variable, when unset): the pin is checked out twice in temporary clones, the patch applied
to one (and reversed with ``git apply -R --check``), and the patched loss is compared with the
unpatched upstream loss at ``margin = 0`` and with our adapter and the test oracles
(``tests/oracles.py``: eq. 3 with the margin on upstream's own logits) at ``margin = -0.2``, on random
and on trained-like features; the patched ``audio_io.py`` of EZ-VSL and SLAVC is checked to read a wav
exactly on the installed PyAV, where upstream's reads nothing.

Tolerances (``rel_close``): scalars ``|a - e| <= 1e-5 * max(|a|, |e|)``; tensors elementwise
``1e-5`` relative with an absolute floor of ``1e-6`` times the tensor's largest magnitude (einsum
and matmul sum in different orders, so margin 0 is upstream up to float rounding, not bitwise:
``patches/parity.txt`` counts how often it is bitwise); LVS logits are compared per column group
(positive, negatives, the -99 x diagonal, background) so the diagonal's magnitude does not loosen the
others. Against the oracles' cross-entropy with the margin (``oracle_close``) the floor is the
rounding of the logits themselves, ``8 eps`` times their largest magnitude: a trained-like batch has a
loss near ``1e-12`` that both ways compute as ``log(1 + tiny)``, rounded differently.

A batch of one clip (upstream's evaluation batch): ``margin_nce`` refuses ``B = 1`` by contract, but
the loss sites the patches call (``adapters.ezvsl.max_xmil_loss``, ``adapters.margin_cross_entropy``)
return 0 attached to the graph, as upstream's cross-entropy over a single logit does; the
``batch_size_one`` tests check that parity (loss, gradients, localisation map) for EZ-VSL, FNAC and SLAVC.
"""

from __future__ import annotations

import importlib
import inspect
import py_compile
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginnce_loss.adapters import ezvsl as ezvsl_adapter
from marginnce_loss.adapters import lvs as lvs_adapter

from .oracles import margin_cross_entropy_ref, normalized_features, trained_like_features, upstream_lvs_logits
from .patch_upstreams import (
    FEATURES,
    INPUT_IDS,
    INPUTS,
    MARGIN,
    UPSTREAMS,
    Modules,
    isolated,
    modules,
    oracle_close,
    rel_close,
    trees,
)

# ---- audio_io.py (EZ-VSL, SLAVC) --------------------------------------------------------------


@pytest.mark.parametrize("key", ["ezvsl", "slavc"])
def test_patched_audio_io_reads_a_wav_exactly(key, tmp_path):
    """Upstream's loader on PyAV >= 9 (resample() returns a list) reads no audio; the patched one
    returns the wav's samples exactly, and a resampled read has its full length (the flush)."""
    av = pytest.importorskip("av")
    sf = pytest.importorskip("soundfile")
    t = trees(key, tmp_path / "upstream")
    pcm = np.random.default_rng(0).integers(-20000, 20000, 4 * 16000, dtype=np.int16)
    wav = tmp_path / "clip.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    loaded = {}
    for name, tree in (("original", t.original), ("patched", t.patched)):
        with isolated(tree):
            loaded[name] = importlib.import_module("audio_io")

    audio, rate = loaded["patched"].load_audio_av(str(wav), start_time=0.5, duration=3.0)
    assert rate == 16000 and audio.shape == (1, 48000)
    assert np.array_equal(audio[0], pcm[8000:56000] / np.iinfo(np.int16).max)
    audio, rate = loaded["patched"].load_audio_av(str(wav), rate=11025)  # 16 samples come only with the flush
    assert rate == 11025 and audio.shape == (1, 4 * 11025)

    if int(av.__version__.split(".")[0]) >= 9:
        with pytest.raises(ValueError, match="need at least one array to concatenate"):
            loaded["original"].load_audio_av(str(wav), start_time=0.5, duration=3.0)


# ---- EZ-VSL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ezvsl(tmp_path_factory) -> Modules:
    return modules("ezvsl", tmp_path_factory.mktemp("upstream-ezvsl"))


def _ezvsl_models(mods: Modules, dim: int, margin: float):
    torch.manual_seed(0)
    original = mods.original.EZVSL(0.03, dim)
    patched = mods.patched.EZVSL(0.03, dim, margin=margin)
    patched.load_state_dict(original.state_dict())
    return original.eval(), patched.eval()


@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_ezvsl_loss_matches_upstream_and_adapter(ezvsl, kind, dtype):
    img, aud = FEATURES[kind](12, 64, 7, 7, dtype, 5)
    original, patched = _ezvsl_models(ezvsl, 64, 0.0)
    up_loss, up_slogits = original.max_xmil_loss(img, aud)
    loss, slogits = patched.max_xmil_loss(img, aud)
    rel_close(loss, up_loss, what="margin 0 loss")
    rel_close(slogits, up_slogits, what="Slogits")

    patched.margin = MARGIN
    loss_m, slogits_m = patched.max_xmil_loss(img, aud)
    adapter_loss, _ = ezvsl_adapter.max_xmil_loss(img, aud, tau=0.03, margin=MARGIN)
    rel_close(loss_m, adapter_loss, what="margin -0.2 loss vs adapter")
    logits = up_slogits.flatten(-2).max(dim=-1).values
    expected = margin_cross_entropy_ref(logits, MARGIN, 0.03, symmetric=True)
    oracle_close(loss_m, expected, logits, MARGIN, 0.03, what="margin -0.2 loss vs oracle on upstream's logits")
    assert loss_m.item() < up_loss.item() or up_loss.item() == 0.0  # a negative margin loosens the positives
    rel_close(slogits_m, up_slogits, what="Slogits do not depend on the margin")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_ezvsl_forward_through_the_backbones(ezvsl, margin):
    original, patched = _ezvsl_models(ezvsl, 512, margin)
    g = torch.Generator().manual_seed(1)
    image, spec = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_loss, up_map = original(image, spec)
        loss, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    if margin == 0.0:
        rel_close(loss, up_loss, what="loss")
    else:
        assert loss.item() < up_loss.item()


def test_ezvsl_constructor_default_margin_is_zero(ezvsl):
    assert inspect.signature(ezvsl.patched.EZVSL.__init__).parameters["margin"].default == 0.0


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_ezvsl_loss_with_batch_size_one(ezvsl, margin):
    """validate()/test.py call forward with batch_size=1: upstream's CE over one logit is 0, and so is
    the patched loss, at any margin, still attached to the graph (zero gradients, as upstream's)."""
    original, patched = _ezvsl_models(ezvsl, 64, margin)
    grads = []
    for model in (original, patched):
        img, aud = normalized_features(1, 64, 7, 7, 0, dtype=torch.float32)
        img.requires_grad_(True), aud.requires_grad_(True)
        loss, slogits = model.max_xmil_loss(img, aud)
        loss.backward()
        grads.append((loss.detach(), slogits.detach(), img.grad, aud.grad))
    (up_loss, up_slogits, up_gimg, up_gaud), (loss, slogits, gimg, gaud) = grads
    assert loss.item() == up_loss.item() == 0.0
    rel_close(slogits, up_slogits, what="Slogits")
    assert torch.equal(gimg, up_gimg) and torch.equal(gaud, up_gaud) and not gimg.any() and not gaud.any()


def test_ezvsl_forward_with_batch_size_one(ezvsl):
    original, patched = _ezvsl_models(ezvsl, 512, MARGIN)
    g = torch.Generator().manual_seed(3)
    image, spec = torch.randn(1, 3, 224, 224, generator=g), torch.randn(1, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_loss, up_map = original(image, spec)
        loss, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    assert loss.item() == up_loss.item() == 0.0


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patched_files_compile(key, tmp_path_factory):
    t = trees(key, tmp_path_factory.mktemp(f"upstream-{key}"))
    for path in UPSTREAMS[key].files:
        py_compile.compile(str(t.patched / path), cfile=str(tmp_path_factory.mktemp("pyc") / "x.pyc"), doraise=True)


# ---- FNAC -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fnac(tmp_path_factory) -> Modules:
    return modules("fnac", tmp_path_factory.mktemp("upstream-fnac"))


def _fnac_models(mods: Modules, dim: int, margin: float):
    torch.manual_seed(0)
    original = mods.original.FNAC(0.03, dim, 0.0, 0.0)
    patched = mods.patched.FNAC(0.03, dim, 0.0, 0.0, margin=margin)
    patched.load_state_dict(original.state_dict())
    return original.eval(), patched.eval()


@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_fnac_loss_matches_upstream_and_adapter(fnac, kind, dtype):
    img, aud = FEATURES[kind](12, 64, 7, 7, dtype, 6)
    original, patched = _fnac_models(fnac, 64, 0.0)
    up_losses, up_slogits = original.calculate_loss(img, aud)
    losses, slogits = patched.calculate_loss(img, aud)
    assert len(losses) == len(up_losses) == 4
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"margin 0, loss term {k}")
    rel_close(slogits, up_slogits, what="Slogits")

    patched.margin = MARGIN
    losses_m, _ = patched.calculate_loss(img, aud)
    rel_close(losses_m[0], ezvsl_adapter.max_xmil_loss(img, aud, tau=0.03, margin=MARGIN)[0], what="InfoNCE term vs adapter")
    logits = up_slogits.flatten(-2).max(dim=-1).values
    expected = margin_cross_entropy_ref(logits, MARGIN, 0.03, symmetric=True)
    oracle_close(losses_m[0], expected, logits, MARGIN, 0.03, what="InfoNCE term vs oracle on upstream's logits")
    for k in (1, 2, 3):  # the false-negative (FNS/TNS) terms do not see the margin
        rel_close(losses_m[k], up_losses[k], what=f"loss term {k} at margin -0.2")


def test_fnac_forward_through_the_backbones(fnac):
    original, patched = _fnac_models(fnac, 512, 0.0)
    g = torch.Generator().manual_seed(2)
    image, spec = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_losses, up_map = original(image, spec)
        losses, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"loss term {k}")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_fnac_loss_with_batch_size_one(fnac, margin):
    """validate()/test.py call forward with batch_size=1: every loss term is upstream's, the InfoNCE
    term 0 at any margin."""
    img, aud = normalized_features(1, 64, 7, 7, 0, dtype=torch.float32)
    original, patched = _fnac_models(fnac, 64, margin)
    up_losses, up_slogits = original.calculate_loss(img, aud)
    losses, slogits = patched.calculate_loss(img, aud)
    assert len(losses) == len(up_losses) == 4
    assert losses[0].item() == up_losses[0].item() == 0.0
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"loss term {k}")
    rel_close(slogits, up_slogits, what="Slogits")


# ---- SLAVC ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slavc(tmp_path_factory) -> Modules:
    return modules("slavc", tmp_path_factory.mktemp("upstream-slavc"))


class _Feed(nn.Module):
    """Stands in for a backbone: returns its input flattened (SLAVC unflattens it to [B, 512, 7, 7])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _slavc_models(mods: Modules, projections: str):
    torch.manual_seed(0)
    args = (0.03, 512, 0.0, 0.0, 0.9, 0.9, False)
    original = mods.original.SLAVC(*args)
    patched = mods.patched.SLAVC(*args, margin=0.0)
    patched.load_state_dict(original.state_dict())
    for model in (original, patched):
        model.imgnet = model.momentum_imgnet = _Feed()
        model.audnet = model.momentum_audnet = nn.Identity()
        if projections == "identity":  # the features reach the loss as given
            for name in ("img_proj1", "img_proj2", "aud_proj1", "aud_proj2"):
                setattr(model, name, nn.Identity())
                setattr(model, "momentum_" + name, nn.Identity())
    return original.eval(), patched.eval()


def _slavc_formula(model, image, audio, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SLAVC's loss written from its formula (SLAVC ``model.py`` @ 05b429c), the margin on the positive
    logits as eq. 3 puts it (the oracles' ``margin_cross_entropy_ref``):
    ``i2a_nm = log sum_hw softmax_m(a1 / tau) * softmax_hw(a2 / tau)`` (a1, a2 the two projections'
    response maps against the momentum audio), likewise ``a2i`` with momentum images and online audio;
    ``CE(a2i - (m / tau) I) + CE(i2a - (m / tau) I)``. Returns the loss and the logits."""
    tau = model.tau
    img1, img2 = model.forward_img_features(model.imgnet, model.img_proj1, model.img_proj2, image)
    aud1, aud2 = model.forward_aud_features(model.audnet, model.aud_proj1, model.aud_proj2, audio)
    img1_t, img2_t = model.forward_img_features(model.momentum_imgnet, model.momentum_img_proj1, model.momentum_img_proj2, image)
    aud1_t, aud2_t = model.forward_aud_features(model.momentum_audnet, model.momentum_aud_proj1, model.momentum_aud_proj2, audio)

    def pair_logits(i1, i2, a1, a2):
        r1 = (i1.unsqueeze(1) * a1[None, :, :, None, None]).sum(2).flatten(-2) / tau  # [n, m, hw]
        r2 = (i2.unsqueeze(1) * a2[None, :, :, None, None]).sum(2).flatten(-2) / tau
        return torch.log((r1.softmax(dim=1) * r2.softmax(dim=2)).sum(2))

    i2a = pair_logits(img1, img2, aud1_t, aud2_t)
    a2i = pair_logits(img1_t, img2_t, aud1, aud2)
    loss = margin_cross_entropy_ref(a2i, margin, tau) + margin_cross_entropy_ref(i2a, margin, tau)
    return loss, torch.cat([i2a, a2i])


# identity projections carry the prepared (trained-like) features to the loss; random ones scramble them
SLAVC_CASES = [("identity", kind, dtype) for kind, dtype in INPUTS]
SLAVC_CASES += [("random", kind, dtype) for kind, dtype in INPUTS if kind == "random"]


@pytest.mark.parametrize("projections, kind, dtype", SLAVC_CASES,
                         ids=[f"{p}-{k}-{str(d)[6:]}" for p, k, d in SLAVC_CASES])
def test_slavc_loss_matches_upstream_and_formula(slavc, projections, kind, dtype):
    original, patched = _slavc_models(slavc, projections)
    original, patched = original.to(dtype), patched.to(dtype)
    img, aud = FEATURES[kind](8, 512, 7, 7, dtype, 7)
    with torch.no_grad():
        up_loss, up_map = original(img, aud, mode="test")
        loss, avl_map = patched(img, aud, mode="test")
        rel_close(loss, up_loss, what="margin 0 loss")
        rel_close(avl_map, up_map, what="localisation map")
        formula, logits = _slavc_formula(original, img, aud, 0.0)
        oracle_close(formula, up_loss, logits, 0.0, original.tau, what="formula at margin 0 vs upstream")

        patched.margin = MARGIN
        loss_m, _ = patched(img, aud, mode="test")
        formula, logits = _slavc_formula(original, img, aud, MARGIN)
    oracle_close(loss_m, formula, logits, MARGIN, original.tau, what="margin -0.2 vs formula")
    assert loss_m.item() < up_loss.item() or up_loss.item() == 0.0


def test_slavc_train_mode_matches_upstream(slavc):
    """mode='train' also runs the momentum update; both models start equal and stay equal."""
    original, patched = _slavc_models(slavc, "random")
    original.train(), patched.train()
    img, aud = normalized_features(6, 512, 7, 7, 9, dtype=torch.float32)
    for _ in range(2):
        up_loss, _ = original(img, aud)
        loss, _ = patched(img, aud)
        rel_close(loss, up_loss, what="train-mode loss")
        up_loss.backward(), loss.backward()
    for (name, p), (_, q) in zip(original.named_parameters(), patched.named_parameters()):
        if p.grad is not None:
            rel_close(q.grad, p.grad, rel=1e-4, what=f"grad {name}")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_slavc_forward_with_batch_size_one(slavc, margin):
    """SLAVC's test.py calls forward (which computes the loss) with batch_size=1 by default: the
    loss is upstream's 0 at any margin, the map upstream's."""
    original, patched = _slavc_models(slavc, "identity")
    patched.margin = margin
    img, aud = normalized_features(1, 512, 7, 7, 0, dtype=torch.float32)
    with torch.no_grad():
        up_loss, up_map = original(img, aud, mode="test")
        loss, avl_map = patched(img, aud, mode="test")
    rel_close(avl_map, up_map, what="localisation map")
    assert loss.item() == up_loss.item() == 0.0


def test_slavc_constructor_default_margin_is_zero(slavc):
    assert inspect.signature(slavc.patched.SLAVC.__init__).parameters["margin"].default == 0.0


# ---- LVS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvs(tmp_path_factory) -> Modules:
    return modules("lvs", tmp_path_factory.mktemp("upstream-lvs"))


def _lvs_args(**overrides) -> Namespace:
    values = dict(epsilon=0.65, epsilon2=0.4, tri_map=True, Neg=True, random_threshold=None, margin=0.0)
    values.update(overrides)
    return Namespace(**values)


def _lvs_models(mods: Modules, **overrides):
    """AVENet with its backbones replaced so that forward(img, aud[:, :, None, None]) sees the features."""
    args = _lvs_args(**overrides)
    original, patched = mods.original.AVENet(args), mods.patched.AVENet(args)
    for model in (original, patched):
        model.imgnet, model.audnet, model.avgpool = nn.Identity(), nn.Identity(), nn.Identity()
    return original.eval(), patched.eval(), args


def _no_cuda(self, *args, **kwargs):
    raise AssertionError("the patched LVS forward called Tensor.cuda()")


def _lvs_forward(model, img, aud, args, cuda_is_identity: bool, mp: pytest.MonkeyPatch):
    mp.setattr(torch.Tensor, "cuda", (lambda self, *a, **k: self) if cuda_is_identity else _no_cuda)
    try:
        return model(img, aud[:, :, None, None], args)
    finally:
        mp.undo()


def _lvs_parts(logits: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    block = logits[:, 1:1 + b]
    eye = torch.eye(b, dtype=torch.bool)
    parts = {"positive": logits[:, 0], "negatives": block[~eye], "diagonal": block[eye]}
    if logits.shape[1] == b + 2:
        parts["background"] = logits[:, -1]
    return parts


LVS_VARIANTS = [dict(tri_map=True, Neg=True), dict(tri_map=False, Neg=True), dict(tri_map=True, Neg=False)]


@pytest.mark.parametrize("variant", LVS_VARIANTS, ids=["trimap-neg", "notrimap-neg", "trimap-noneg"])
@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_lvs_logits_match_upstream_and_adapter(lvs, kind, dtype, variant):
    b = 10
    img, aud = FEATURES[kind](b, 64, 14, 14, dtype, 8)
    original, patched, args = _lvs_models(lvs, **variant)
    mp = pytest.MonkeyPatch()
    with torch.no_grad():
        up_a, up_logits, up_pos, up_neg = _lvs_forward(original, img, aud, args, True, mp)
        a, logits, pos, neg = _lvs_forward(patched, img, aud, args, False, mp)
    assert logits.shape == up_logits.shape == (b, 1 + b + (1 if variant["Neg"] else 0))
    for name, part in _lvs_parts(logits, b).items():
        rel_close(part, _lvs_parts(up_logits, b)[name], what=f"margin 0 logits, {name}")
    target = torch.zeros(b, dtype=torch.long)
    rel_close(F.cross_entropy(logits, target), F.cross_entropy(up_logits, target), what="margin 0 loss")
    for name, value, expected in (("A", a, up_a), ("Pos", pos, up_pos), ("Neg", neg, up_neg)):
        rel_close(value, expected, what=name)

    patched.margin = MARGIN
    with torch.no_grad():
        _, logits_m, _, _ = _lvs_forward(patched, img, aud, args, False, mp)
    adapter = lvs_adapter.lvs_logits(img, aud, margin=MARGIN, trimap=variant["tri_map"], hard_negative=variant["Neg"])
    for name, part in _lvs_parts(logits_m, b).items():
        rel_close(part, _lvs_parts(adapter, b)[name], what=f"margin -0.2 logits vs adapter, {name}")
    oracle = upstream_lvs_logits(img, aud, trimap=variant["tri_map"], neg=variant["Neg"], margin=MARGIN)
    for name, part in _lvs_parts(logits_m, b).items():
        rel_close(part, _lvs_parts(oracle, b)[name], what=f"margin -0.2 logits vs oracle, {name}")


def test_lvs_forward_with_batch_size_one(lvs):
    """test.py runs forward with batch_size=1; the patched forward (no .cuda()) gives upstream's outputs."""
    img, aud = trained_like_features(1, 64, 14, 14, 4, dtype=torch.float32)
    original, patched, args = _lvs_models(lvs)
    mp = pytest.MonkeyPatch()
    with torch.no_grad():
        up_a, up_logits, _, _ = _lvs_forward(original, img, aud, args, True, mp)
        a, logits, _, _ = _lvs_forward(patched, img, aud, args, False, mp)
    rel_close(a, up_a, what="A")
    assert logits.shape == up_logits.shape == (1, 3)
    for name, part in _lvs_parts(logits, 1).items():
        rel_close(part, _lvs_parts(up_logits, 1)[name], what=f"logits, {name}")


def test_lvs_constructor_reads_the_margin(lvs):
    _, patched, _ = _lvs_models(lvs, margin=-0.3)
    assert patched.margin == -0.3


