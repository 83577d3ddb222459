"""Global-batch marginNCE across ranks (marginnce_loss.distributed) against one process on the whole batch.

Two gloo processes (torch.multiprocessing 'spawn', file:// rendezvous in a tmp dir) run every case once
in a module-scoped fixture and write their results to files; the parent computes the single-process
reference on the concatenated batch and asserts. The encoders are wrapped in real
DistributedDataParallel, so the gradients compared are the ones DDP leaves after its averaging.
"""

from __future__ import annotations

import gc
import itertools
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from marginnce_loss import LocalizationMarginNCE
from marginnce_loss import distributed as D
from marginnce_loss import functional as MF

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is required"
    ),
    pytest.mark.slow,  # two spawned processes
]

WORLD = 2
C_IN, C, H, W, D_IN = 5, 8, 3, 3, 6
SIM_KW = {"thresholded": dict(tau=0.07, epsilon=0.5, beta=0.1), "max": dict(tau=0.03)}
MARGIN = -0.2
# per-rank batch sizes: equal, and unequal (supported: sizes are all-gathered first)
SIZES = {"equal": (3, 3), "unequal": (2, 4)}
TRAIN_CASES = list(itertools.product(("thresholded", "max"), (False, True), ("mean", "sum"), tuple(SIZES)))
NONE_CASES = list(itertools.product(("thresholded", "max"), (False, True)))
GATHER_SIZES = (2, 3)  # GatherWithGrad test, unequal on purpose
GATHER_DIM = 4


class Encoder(nn.Module):
    """img = normalize(conv1x1(x)), aud = normalize(linear(y)): a shared model whose gradients we compare."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C_IN, C, 1)
        self.lin = nn.Linear(D_IN, C)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nn.functional.normalize(self.conv(x), dim=1), nn.functional.normalize(self.lin(y), dim=1)


def _criterion(sim: str, symmetric: bool, reduction: str, gather: bool) -> LocalizationMarginNCE:
    return LocalizationMarginNCE(
        sim, margin=MARGIN, symmetric=symmetric, reduction=reduction, gather_distributed=gather, **SIM_KW[sim]
    )


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, C_IN, H, W, generator=g, dtype=torch.float64),
        torch.randn(n, D_IN, generator=g, dtype=torch.float64),
    )


def _model(state: dict[str, torch.Tensor]) -> Encoder:
    model = Encoder().double()
    model.load_state_dict(state)
    return model


def _slice(sizes: tuple[int, ...], r: int) -> slice:
    return slice(sum(sizes[:r]), sum(sizes[: r + 1]))


def _gather_weights(n: int) -> list[torch.Tensor]:
    """Rank s's upstream weights for the gather test: loss_s = sum(G * W_s^T)."""
    return [torch.randn(GATHER_DIM, n, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
            for s in range(WORLD)]


def _gather_input(r: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + r)
    return torch.randn(GATHER_SIZES[r], GATHER_DIM, generator=g, dtype=torch.float64)


def _catch(fn: Any) -> tuple[str, str]:
    try:
        fn()
    except (TypeError, ValueError) as e:
        return type(e).__name__, str(e)
    return "no error", ""


def _worker(r: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=r, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        payload = torch.load(os.path.join(tmp, "inputs.pt"))
        out: dict[str, Any] = {"helpers": (D.is_distributed(), D.rank(), D.world_size())}

        for case in TRAIN_CASES:
            sim, symmetric, reduction, sizes_key = case
            x, y = payload["data"][sizes_key]
            sl = _slice(SIZES[sizes_key], r)
            model = _model(payload["state"])
            ddp = DistributedDataParallel(model)
            loss = _criterion(sim, symmetric, reduction, True)(*ddp(x[sl], y[sl]))
            loss.backward()
            out[repr(case)] = (loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})

        for case in NONE_CASES:
            x, y = payload["data"]["unequal"]
            sl = _slice(SIZES["unequal"], r)
            out[repr(("none",) + case)] = _criterion(*case[:2], "none", True)(*_model(payload["state"])(x[sl], y[sl]))

        # GatherWithGrad with non-contiguous incoming gradients (einsum; transpose) and a gradient
        # tensor that autograd shares with another input (the add's other operand h).
        n = sum(GATHER_SIZES)
        ws = _gather_weights(n)
        x = _gather_input(r).requires_grad_(True)
        contiguous: list[bool] = []
        g = D.all_gather_with_grad(x)
        g.register_hook(lambda grad: contiguous.append(grad.is_contiguous()))
        torch.einsum("nc,cn->", g, ws[r]).backward()
        einsum_grad = x.grad.clone()
        x.grad = None
        h = torch.zeros(n, GATHER_DIM, dtype=torch.float64, requires_grad=True)
        g2 = D.all_gather_with_grad(x)
        g2.register_hook(lambda grad: contiguous.append(grad.is_contiguous()))
        ((g2 + h).t() * ws[r]).sum().backward()
        transpose_grad, h_grad = x.grad.clone(), h.grad.clone()
        # a contiguous incoming gradient that the add hands, as the same tensor, to the node of u = 2h
        # as well; u is created first, so the gather's backward runs first: reducing in place would
        # corrupt h's gradient
        x.grad, h.grad = None, None
        u = h * 2.0
        ((D.all_gather_with_grad(x) + u) * ws[r].t().contiguous()).sum().backward()
        out["gather"] = (g.detach(), einsum_grad, transpose_grad, h_grad, x.grad.clone(), h.grad.clone(), contiguous)

        # inconsistent inputs across ranks raise the same error on every rank (no rank left waiting)
        loss_fn = _criterion("max", True, "mean", True)
        img = nn.functional.normalize(torch.randn(2, C, H + r, W, dtype=torch.float64), dim=1)
        aud = nn.functional.normalize(torch.randn(2, C, dtype=torch.float64), dim=1)
        out["err_shape"] = _catch(lambda: loss_fn(img, aud))
        dtype = torch.float32 if r == 1 else torch.float64
        out["err_dtype"] = _catch(lambda: loss_fn(img[..., :H, :].to(dtype), aud.to(dtype)))
        out["err_gather"] = _catch(lambda: D.all_gather_with_grad(torch.zeros(2, 3 + r)))
        # the group is still in step after the errors
        out["after_errors"] = D.all_gather_with_grad(torch.full((1,), float(r))).tolist()

        torch.save(out, os.path.join(tmp, f"rank{r}.pt"))
    finally:
        # free the DDP wrappers' reference cycles while the group is destroyed, not at interpreter
        # shutdown (which aborts the process; see marginnce_kit.training.distributed.ProcessGroup.close)
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in Encoder().double().state_dict().items()}
    data = {key: _inputs(sum(sizes), seed=i) for i, (key, sizes) in enumerate(SIZES.items())}
    torch.save({"state": state, "data": data}, tmp / "inputs.pt")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    return {"state": state, "data": data, "ranks": ranks}


def _reference(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, criterion: nn.Module):
    model = _model(state)
    loss = criterion(*model(x, y))
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12 * scale)


def test_helpers_inside_process_group(results: dict[str, Any]) -> None:
    assert [res["helpers"] for res in results["ranks"]] == [(True, r, WORLD) for r in range(WORLD)]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_ddp_matches_single_process_on_global_batch(results: dict[str, Any], case: tuple[Any, ...]) -> None:
    sim, symmetric, reduction, sizes_key = case
    x, y = results["data"][sizes_key]
    ref_loss, ref_grads = _reference(results["state"], x, y, _criterion(sim, symmetric, reduction, False))
    per_rank = [res[repr(case)] for res in results["ranks"]]
    _close(torch.stack([loss for loss, _ in per_rank]).mean(), ref_loss)
    for _, grads in per_rank:  # DDP already averaged: every rank holds the global-batch gradient
        assert grads.keys() == ref_grads.keys()
        for k in ref_grads:
            assert ref_grads[k].abs().max() > 0
            _close(grads[k], ref_grads[k])

    # sensitivity: per-rank losses without the gather (local negatives only) give another gradient
    sizes = SIZES[sizes_key]
    local_grads = [_reference(results["state"], x[_slice(sizes, r)], y[_slice(sizes, r)],
                              _criterion(sim, symmetric, reduction, False))[1] for r in range(WORLD)]
    naive = sum(g["lin.weight"] for g in local_grads) / WORLD
    assert (naive - ref_grads["lin.weight"]).abs().max() > 1e-3 * ref_grads["lin.weight"].abs().max()


@pytest.mark.parametrize("case", NONE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_reduction_none_concatenates_to_single_process(results: dict[str, Any], case: tuple[Any, ...]) -> None:
    x, y = results["data"]["unequal"]
    ref = _criterion(*case, "none", False)(*_model(results["state"])(x, y)).detach()
    per_rank = [res[repr(("none",) + case)] for res in results["ranks"]]
    assert [v.shape[0] for v in per_rank] == list(SIZES["unequal"])
    _close(torch.cat(per_rank), ref)


def test_gather_with_grad_non_contiguous_and_shared_incoming_grad(results: dict[str, Any]) -> None:
    n = sum(GATHER_SIZES)
    ws = _gather_weights(n)
    expected_all = torch.cat([_gather_input(r) for r in range(WORLD)])
    grad_sum = sum(w.t() for w in ws)  # d(sum_s loss_s)/dG
    for r, res in enumerate(results["ranks"]):
        gathered, einsum_grad, transpose_grad, h_grad, shared_grad, h_shared_grad, contiguous = res["gather"]
        assert contiguous == [False, False]  # the trap is exercised: incoming grads are non-contiguous
        assert torch.equal(gathered, expected_all)
        own = grad_sum[_slice(GATHER_SIZES, r)]
        _close(einsum_grad, own)
        _close(transpose_grad, own)
        _close(shared_grad, own)
        # the incoming gradient was not reduced in place (h receives the same tensor from the add)
        assert torch.equal(h_grad, ws[r].t())
        assert torch.equal(h_shared_grad, 2.0 * ws[r].t())


def test_inconsistent_ranks_raise_on_every_rank(results: dict[str, Any]) -> None:
    for res in results["ranks"]:
        kind, msg = res["err_shape"]
        assert kind == "ValueError" and "img" in msg and "rank 1" in msg and str((2, C, H + 1, W)) in msg
        kind, msg = res["err_dtype"]
        assert kind == "TypeError" and "torch.float32 on rank 1" in msg
        kind, msg = res["err_gather"]
        assert kind == "ValueError" and "x:" in msg and "(2, 4)" in msg
        assert res["after_errors"] == [0.0, 1.0]


# ---- no process group / a world of one: identical to gather_distributed=False -------------------

def _assert_same_as_local(sim: str, symmetric: bool, reduction: str) -> None:
    torch.manual_seed(1)
    state = {k: v.detach().clone() for k, v in Encoder().double().state_dict().items()}
    x, y = _inputs(4, seed=7)
    out = []
    for gather in (True, False):
        model = _model(state)
        loss = _criterion(sim, symmetric, reduction, gather)(*model(x, y))
        loss.sum().backward()
        out.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))


ALL_LOCAL = list(itertools.product(("thresholded", "max"), (False, True), ("mean", "sum", "none")))


@pytest.mark.parametrize("case", ALL_LOCAL, ids=lambda c: "-".join(map(str, c)))
def test_without_process_group_is_the_local_loss(case: tuple[str, bool, str]) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    assert (D.is_distributed(), D.rank(), D.world_size()) == (False, 0, 1)
    _assert_same_as_local(*case)


def test_world_size_one_is_the_local_loss(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        assert (D.is_distributed(), D.rank(), D.world_size()) == (True, 0, 1)
        x = torch.randn(3, 2)
        assert D.all_gather_with_grad(x) is x
        for case in ALL_LOCAL:
            _assert_same_as_local(*case)
    finally:
        dist.destroy_process_group()


# ---- the rectangular helper is margin_nce over full rows ---------------------------------------

@pytest.mark.parametrize("sizes", [(3, 3), (1, 4), (2, 1, 3)])
def test_margin_nce_at_offset_splits_the_square_loss(sizes: tuple[int, ...]) -> None:
    n = sum(sizes)
    sim = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 2 - 1
    full = MF.margin_nce(sim, MARGIN, 0.07, reduction="none")
    full_col = MF.margin_nce(sim.t(), MARGIN, 0.07, reduction="none")
    sym = MF.margin_nce(sim, MARGIN, 0.07, symmetric=True, reduction="none")
    for r in range(len(sizes)):
        sl = _slice(sizes, r)
        rows = D._margin_nce_at_offset(sim[sl], sl.start, MARGIN, 0.07)
        cols = D._margin_nce_at_offset(sim[:, sl].t(), sl.start, MARGIN, 0.07)
        _close(rows, full[sl])
        _close(cols, full_col[sl])
        _close(rows + cols, sym[sl])


def test_argument_errors() -> None:
    with pytest.raises(TypeError, match="gather_distributed: expected a bool, got int 1"):
        LocalizationMarginNCE(gather_distributed=1)  # type: ignore[arg-type]
    img = nn.functional.normalize(torch.randn(2, C, H, W), dim=1)
    aud = nn.functional.normalize(torch.randn(2, C), dim=1)
    with pytest.raises(TypeError, match="similarity: expected a callable"):
        D.gathered_localization_margin_nce(img, aud, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction: expected one of"):
        D.gathered_localization_margin_nce(img, aud, MF.max_similarity, reduction="avg")
    with pytest.raises(ValueError, match="aud: expected batch size 2"):
        D.gathered_localization_margin_nce(img, aud[:1], MF.max_similarity)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        D.all_gather_with_grad([1.0])  # type: ignore[arg-type]
