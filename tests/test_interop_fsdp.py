"""FSDP2 (``torch.distributed.fsdp.fully_shard``) under two gloo ranks on CPU equals one process on the global batch.

The model is sharded per submodule and at the root; the loss is ``LocalizationMarginNCE(gather_distributed=True)``,
which scores each rank's anchors against every rank's features and scales its share so that the gradient
averaging of the data-parallel wrapper (FSDP2's reduce-scatter averages over ranks, as DDP's all-reduce does)
gives the single-process gradient (see :mod:`marginnce_loss.distributed`). Checked: the mean over ranks of the
loss, the gathered (``full_tensor``) gradients, and the parameters after one Adam step, in float64.
"""

from __future__ import annotations

import gc
import itertools
import os
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from marginnce_loss import LocalizationMarginNCE

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="torch.distributed.fsdp is required")
pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available() and hasattr(fsdp, "fully_shard")),
        reason="torch.distributed with gloo and FSDP2's fully_shard are required",
    ),
    pytest.mark.slow,  # two spawned processes
]

WORLD = 2
C_IN, C, H, W, D_IN = 5, 8, 3, 3, 6
SIZES = (3, 3)
CASES = list(itertools.product(("thresholded", "max"), (False, True)))
KW = {"thresholded": dict(tau=0.07, epsilon=0.5, beta=0.1), "max": dict(tau=0.03)}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(C_IN, C, 1), nn.ReLU(), nn.Conv2d(C, C, 1))
        self.audio = nn.Sequential(nn.Linear(D_IN, C), nn.ReLU(), nn.Linear(C, C))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nn.functional.normalize(self.visual(x), dim=1), nn.functional.normalize(self.audio(y), dim=1)


def _criterion(case: tuple[str, bool], gather: bool) -> LocalizationMarginNCE:
    sim, symmetric = case
    return LocalizationMarginNCE(sim, margin=-0.2, symmetric=symmetric, gather_distributed=gather, **KW[sim])


def _model(state: dict[str, torch.Tensor]) -> Encoder:
    model = Encoder().double()
    model.load_state_dict(state)
    return model



def _worker(r: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=r, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        payload = torch.load(os.path.join(tmp, "inputs.pt"))
        x, y = payload["data"]
        sl = slice(sum(SIZES[:r]), sum(SIZES[: r + 1]))
        out: dict[str, Any] = {}
        for case in CASES:
            model = _model(payload["state"])
            fsdp.fully_shard(model.visual)
            fsdp.fully_shard(model.audio)
            fsdp.fully_shard(model)
            sharded = type(next(model.parameters())).__name__
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            loss = _criterion(case, True)(*model(x[sl], y[sl]))
            loss.backward()
            grads = {k: p.grad.full_tensor().clone() for k, p in model.named_parameters()}
            optimizer.step()
            params = {k: p.detach().full_tensor().clone() for k, p in model.named_parameters()}
            out[repr(case)] = (sharded, loss.detach(), grads, params)
        torch.save(out, os.path.join(tmp, f"rank{r}.pt"))
    finally:
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in Encoder().double().state_dict().items()}
    g = torch.Generator().manual_seed(1)
    n = sum(SIZES)
    data = (torch.randn(n, C_IN, H, W, generator=g, dtype=torch.float64), torch.randn(n, D_IN, generator=g, dtype=torch.float64))
    torch.save({"state": state, "data": data}, tmp / "inputs.pt")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD, join=True)
    return {"state": state, "data": data, "ranks": [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12 * max(expected.abs().max().item(), 1.0))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-symmetric={c[1]}")
def test_fsdp2_matches_single_process_on_global_batch(results: dict[str, Any], case: tuple[str, bool]) -> None:
    model = _model(results["state"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = _criterion(case, False)(*model(*results["data"]))  # one process, the whole batch, no gathering
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    optimizer.step()
    ranks = [res[repr(case)] for res in results["ranks"]]
    assert [sharded for sharded, *_ in ranks] == ["DTensor"] * WORLD  # really sharded by fully_shard
    _close(sum(loss_r for _, loss_r, _, _ in ranks) / WORLD, loss.detach())
    for _, _, grads_r, params_r in ranks:
        assert grads_r.keys() == grads.keys()
        for k, p in model.named_parameters():
            _close(grads_r[k], grads[k])
            _close(params_r[k], p.detach())
