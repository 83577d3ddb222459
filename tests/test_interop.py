"""Interop of the loss with the rest of PyTorch, on CPU: a whole user model (encoders + loss) under
``torch.compile(fullgraph=True)`` with no graph break and the eager result, and bfloat16 autocast with the
documented dtype policy (float32 loss) close to the float32 run. FSDP2 is in ``test_interop_fsdp.py``,
Lightning in ``test_interop_lightning.py``, pytorch-metric-learning in ``test_interop_pml.py``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from marginnce_loss import LocalizationMarginNCE, MarginNCE

C_IN, C, H, W, D_IN, B = 6, 16, 5, 5, 10, 8


class ModelWithLoss(nn.Module):
    """A user model whose forward ends in the loss: conv / linear encoders, L2 normalisation, marginNCE."""

    def __init__(self, loss: nn.Module, pooled: bool = False) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(C_IN, C, 3, padding=1), nn.ReLU(), nn.Conv2d(C, C, 1))
        self.audio = nn.Sequential(nn.Linear(D_IN, C), nn.ReLU(), nn.Linear(C, C))
        self.loss = loss
        self.pooled = pooled  # MarginNCE on pooled embeddings' cosine matrix instead of the feature maps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        img = nn.functional.normalize(self.visual(x), dim=1)
        aud = nn.functional.normalize(self.audio(y), dim=1)
        if self.pooled:
            emb = nn.functional.normalize(img.mean(dim=(2, 3)), dim=1)
            return self.loss(emb @ aud.t())
        return self.loss(img, aud)


LOSSES = {
    "eq1": lambda: LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07, epsilon=0.3, beta=0.1),
    "max-MIL-symmetric": lambda: LocalizationMarginNCE("max", margin=-0.2, tau=0.03, symmetric=True),
    "pooled": lambda: MarginNCE(margin=-0.2, tau=0.07),
}


def _model(name: str, seed: int = 0) -> ModelWithLoss:
    torch.manual_seed(seed)
    return ModelWithLoss(LOSSES[name](), pooled=name == "pooled")


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C_IN, H, W, generator=g), torch.randn(B, D_IN, generator=g)


def _loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = model(x, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_whole_model_traces_with_no_graph_break(name: str) -> None:
    """torch._dynamo.explain: the model and its loss are one graph, with the input check on (check_inputs=True:
    the first call under a trace leaves the check to the first eager call)."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_model(name))(*_batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow  # inductor's C++ codegen: about 10 s a model on one core
@pytest.mark.parametrize("name", ["eq1", "max-MIL-symmetric"])
def test_whole_model_compiled_fullgraph_equals_eager(name: str, one_thread: None) -> None:
    """torch.compile(model, fullgraph=True) (inductor) gives the eager loss and gradients (float32, to the
    rounding of reordered reductions), and the first eager call afterwards still runs the input check."""
    x, y = _batch()
    eager_loss, eager_grads = _loss_and_grads(_model(name), x, y)
    torch._dynamo.reset()
    model = _model(name)
    compiled = torch.compile(model, fullgraph=True)  # raises on any graph break
    loss, grads = _loss_and_grads(compiled, x, y)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert not model.loss._inputs_checked  # skipped inside the trace
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x, y)  # normalised features: the eager check runs and does not warn
    assert model.loss._inputs_checked


# bfloat16 autocast against the float32 run of the same freshly initialised model, 12 seeds. Everything upstream
# of the loss (two convolutions, two linears) runs in bfloat16 (8 significant bits), so the error is mostly the
# encoders', not the loss's. Stated tolerances (relative), with what torch 2.14 measured over these 12 seeds:
#   loss, largest:  eq1 1e-2 (5.6e-3), max-MIL 6e-2 (5.8e-2: an arg-max moved), pooled 2e-2 (1.6e-2)
#   loss, mean:     eq1 5e-3 (2.5e-3), max-MIL 2e-2 (1.3e-2), pooled 1e-2 (4.6e-3)
#   gradient (L2 over all parameters, largest): eq1 0.3 (0.24), max-MIL 0.45 (0.38), pooled 0.1 (0.076)
AUTOCAST_TOL = {  # name: (largest loss error, mean loss error, largest gradient error)
    "eq1": (1e-2, 5e-3, 0.3),
    "max-MIL-symmetric": (6e-2, 2e-2, 0.45),
    "pooled": (2e-2, 1e-2, 0.1),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_autocast_float32_loss_close_to_float32(name: str, one_thread: None) -> None:
    """Under torch.autocast("cpu", bfloat16) the encoders emit bfloat16 features; the loss is float32 (eq. 3's
    log-sum-exp runs in float32: the documented dtype policy), backward gives float32 parameter gradients, and
    both stay within the stated tolerances of the float32 run."""
    largest, mean, grad_bound = AUTOCAST_TOL[name]
    loss_errors, grad_errors = [], []
    for seed in range(12):
        x, y = _batch(seed + 10)
        ref_loss, ref_grads = _loss_and_grads(_model(name, seed), x, y)
        model = _model(name, seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.visual(x).dtype == torch.bfloat16  # autocast is really on for the encoders
            loss = model(x, y)
        assert loss.dtype == torch.float32
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        loss_errors.append(abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()))
        got = torch.cat([p.grad.flatten() for p in model.parameters()])
        want = torch.cat([r.flatten() for r in ref_grads])
        grad_errors.append(((got - want).norm() / want.norm()).item())
    assert max(loss_errors) <= largest, loss_errors
    assert sum(loss_errors) / len(loss_errors) <= mean, loss_errors
    assert max(grad_errors) <= grad_bound, grad_errors


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
def test_autocast_disabled_around_the_loss_gives_the_float32_loss(similarity: str) -> None:
    """Inside an autocast region the kernels' matrix product runs in bfloat16 too (autocast's matmul policy);
    ``torch.autocast("cpu", enabled=False)`` around the loss on ``.float()`` features gives the float32 loss
    exactly, as documented in docs/interop.md."""
    g = torch.Generator().manual_seed(3)
    img = nn.functional.normalize(torch.randn(B, C, H, W, generator=g), dim=1)
    aud = nn.functional.normalize(torch.randn(B, C, generator=g), dim=1)
    loss_fn = LocalizationMarginNCE(similarity, epsilon=0.3, beta=0.1, backend="eager")
    exact = loss_fn(img, aud)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss_fn(img, aud)
        with torch.autocast("cpu", enabled=False):
            outside = loss_fn(img.float(), aud.float())
    assert inside.dtype == outside.dtype == torch.float32
    assert not torch.equal(inside, exact)  # the bfloat16 matrix product is visible
    assert torch.equal(outside, exact)
