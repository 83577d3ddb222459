"""A Lightning ``LightningModule`` training with marginNCE (the example of docs/interop.md) equals a plain loop.

Skipped when neither ``lightning`` nor ``pytorch_lightning`` is installed (an optional dependency, not the
package's). One CPU device: three ``Trainer`` steps give the parameters of three hand-written Adam steps. Two CPU
processes (``strategy="ddp_spawn"``, gloo) with ``gather_distributed=True``, each holding half of every global
batch: the parameters of one process training on the whole global batches.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from marginnce_loss import LocalizationMarginNCE

if importlib.util.find_spec("lightning") is not None:
    import lightning as L
elif importlib.util.find_spec("pytorch_lightning") is not None:
    import pytorch_lightning as L
else:
    pytest.skip("neither lightning nor pytorch_lightning is installed", allow_module_level=True)

C_IN, C, H, W, D_IN, N, B, STEPS = 5, 8, 4, 4, 6, 16, 4, 3


class MarginNCEModule(L.LightningModule):
    """The docs' example: encoders, L2 normalisation and marginNCE in ``training_step``."""

    def __init__(self, margin: float = -0.2, lr: float = 1e-2, gather_distributed: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.visual = nn.Conv2d(C_IN, C, 1)
        self.audio = nn.Linear(D_IN, C)
        self.loss_fn = LocalizationMarginNCE(
            "thresholded", margin=margin, tau=0.07, epsilon=0.5, beta=0.1, gather_distributed=gather_distributed
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nn.functional.normalize(self.visual(x), dim=1), nn.functional.normalize(self.audio(y), dim=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(*self(*batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class HalfBatchModule(MarginNCEModule):
    """Under DDP, rank r trains on half r of each global batch of ``2 * B`` clips (its own loader, no sampler)."""

    def train_dataloader(self) -> DataLoader:
        r, w = self.global_rank, self.trainer.world_size
        per_rank = 2 * B // w
        idx = [k * 2 * B + r * per_rank + i for k in range(N // (2 * B)) for i in range(per_rank)]
        return DataLoader(torch.utils.data.Subset(_data(), idx), batch_size=per_rank, shuffle=False)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(N, C_IN, H, W, generator=g), torch.randn(N, D_IN, generator=g))


def test_lightning_training_step_equals_a_plain_loop(tmp_path, one_thread: None) -> None:
    torch.manual_seed(0)
    module = MarginNCEModule()
    torch.manual_seed(0)
    plain = MarginNCEModule()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(_data(), batch_size=B, shuffle=False))
    assert trainer.global_step == STEPS

    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
    losses = []
    for x, y in itertools.islice(DataLoader(_data(), batch_size=B, shuffle=False), STEPS):
        optimizer.zero_grad()
        loss = plain.loss_fn(*plain(x, y))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    for (k, p), q in zip(module.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7, msg=k)
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], losses[-1])
    assert module.hparams.margin == -0.2  # save_hyperparameters records the margin



def _plain_loop(module: MarginNCEModule, batch_size: int, steps: int) -> list[torch.Tensor]:
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.lr)
    losses = []
    for x, y in itertools.islice(DataLoader(_data(), batch_size=batch_size, shuffle=False), steps):
        optimizer.zero_grad()
        loss = module.loss_fn(*module(x, y))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.slow  # two spawned processes, each importing lightning
def test_lightning_two_process_ddp_with_gathered_negatives_equals_one_process(tmp_path) -> None:
    """DDP (2 CPU ranks, gloo) with gather_distributed=True: each rank scores its 4 anchors against all 8 clips, and
    DDP's averaged gradient is the single-process gradient, so the weights Lightning hands back after the steps are
    those of one process on the global batches of 8."""
    steps = N // (2 * B)
    torch.manual_seed(0)
    module = HalfBatchModule(gather_distributed=True)
    torch.manual_seed(0)
    plain = MarginNCEModule()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, default_root_dir=tmp_path,
    )
    trainer.fit(module)
    _plain_loop(plain, 2 * B, steps)
    for (k, p), q in zip(module.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=k)
    # and the steps did move the weights (the comparison is not of two initialisations)
    torch.manual_seed(0)
    assert not torch.equal(MarginNCEModule().visual.weight, module.visual.weight)
