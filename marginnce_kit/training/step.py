"""The training step and the epoch, as functions (the shape of torchvision's ``references/classification/train.py``
``train_one_epoch`` and open_clip's ``training/train.py``): the trainer (:func:`marginnce_kit.training.loop.train`),
the device check and the benchmarks all call these, so what they time is what users run.

* :func:`build_optimizer`: Adam with the run's learning rate and weight decay;
* :func:`make_train_loader`: an epoch's loader over a :class:`~marginnce_kit.training.sampler.GlobalBatchSampler`
  (seeded from ``(seed, epoch, rank)``); :func:`epoch_loader`: the same after setting the sampler's and the
  dataset's epoch (what :func:`train_one_epoch` and the device check iterate);
* :func:`train_step`: forward under autocast, the global-batch loss, backward and the optimiser step (skipped,
  and reported, when the loss is not finite);
* :func:`train_one_epoch`: the epoch's steps with the per-step learning rate, failure accounting, the
  non-finite-loss stop and (with clip labels) the mechanism's measures.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..cli import UsageError
from ..data.datasets import collate_batch
from ..data.seeds import derive_seed
from ..models import WEIGHT_DECAY, ModelConfig
from .config import TrainConfig
from .diagnostics import MechanismMeter, mechanism_terms
from .distributed import ProcessGroup
from .sampler import GlobalBatchSampler
from .schedule import lr_at_step

__all__ = ["StepOutput", "NonFiniteLossError", "build_optimizer", "make_train_loader", "epoch_loader", "train_step",
           "train_one_epoch"]


class NonFiniteLossError(UsageError, FloatingPointError):
    """The loss of a step was NaN or infinite; the message names the epoch, the step and the batch's clips."""


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``Adam(model.parameters(), lr, weight_decay)`` of a run (``weight_decay=None``: the method's own,
    :data:`marginnce_kit.models.WEIGHT_DECAY`)."""
    decay = WEIGHT_DECAY[config.model] if config.weight_decay is None else config.weight_decay
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=decay)


def make_train_loader(train_set: Dataset, sampler: GlobalBatchSampler, *, workers: int, seed: int, epoch: int,
                      rank: int = 0, pin_memory: bool = False) -> DataLoader:
    """The loader of epoch ``epoch`` (call ``sampler.set_epoch(epoch)`` first): batches of uint8 frames that
    :func:`~marginnce_kit.data.datasets.collate_batch` stacks; worker seeds from ``(seed, "loader", epoch, rank)``."""
    if workers > 0:
        # collect before the workers fork: a cycle of native objects left in this process (a PyAV frame from an
        # in-process prepare or decode) freed in a forked worker waits forever on its codec's threads, which
        # the fork did not copy (seen as a DataLoader hang in the worker's first torch.manual_seed)
        gc.collect()
    return DataLoader(train_set, batch_sampler=sampler, num_workers=workers, collate_fn=collate_batch,
                      generator=torch.Generator().manual_seed(derive_seed(seed, "loader", epoch, rank)),
                      pin_memory=pin_memory)


def epoch_loader(train_set: Dataset, sampler: GlobalBatchSampler, config: TrainConfig, *, epoch: int,
                 device: torch.device, rank: int = 0) -> DataLoader:
    """The training loader of ``epoch`` (0-based) of a run: ``sampler.set_epoch(epoch)``, the dataset's
    ``set_epoch(epoch, config.seed)`` when it has one (:class:`~marginnce_kit.data.datasets.AudioVisualDataset`:
    the epoch's crops and flips), then :func:`make_train_loader` with ``config.workers`` (resolved: see
    :func:`~marginnce_kit.training.runtime.effective_config`) and pinned memory on CUDA (not for frames decoded
    on the GPU, ``config.decode_device="cuda"``: they are on the device already)."""
    sampler.set_epoch(epoch)
    set_epoch = getattr(train_set, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch, config.seed)
    return make_train_loader(train_set, sampler, workers=config.workers, seed=config.seed, epoch=epoch, rank=rank,
                             pin_memory=device.type == "cuda" and config.decode_device == "cpu")


@dataclass
class StepOutput:
    """What one step gives back: ``loss`` (the global-batch loss, a host float), ``updated`` (False: the loss
    was not finite and nothing was applied), ``features`` (``(img, aud)``, detached, when asked for),
    ``grad_norm`` (the L2 norm over all parameters' gradients before the optimiser step, when asked for and
    updated; under DDP the averaged gradient, equal on every rank)."""

    loss: float
    updated: bool
    features: tuple[Tensor, Tensor] | None = None
    grad_norm: float | None = None


def train_step(net: nn.Module, image: Tensor, spectrogram: Tensor, optimizer: torch.optim.Optimizer, *,
               amp: bool = False, reduce: Callable[[float], float] = float, return_features: bool = False,
               lr: float | None = None, grad_norm: bool = False) -> StepOutput:
    """One optimiser step of ``net`` (an :class:`~marginnce_kit.models.AudioVisualModel`, or its DDP wrapper)
    on a batch already on the device.

    ``loss, maps = net(image, spectrogram)`` under bfloat16 autocast when ``amp``; ``reduce`` turns the rank's
    loss into the global-batch loss (``ProcessGroup.mean`` under DDP: NaN on any rank is NaN on every rank, so
    all skip together); when it is finite, backward and ``optimizer.step()`` (``lr``: set on every parameter
    group first). ``grad_norm``: also measure the gradients' total L2 norm (one host sync). Returns
    :class:`StepOutput`.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(image, spectrogram, return_features=True) if return_features else net(image, spectrogram)
    loss = out[0]
    step_loss = reduce(float(loss.detach()))
    features = out[2] if return_features else None
    if not math.isfinite(step_loss):
        return StepOutput(step_loss, False, features)
    loss.backward()
    norm = _total_grad_norm(net) if grad_norm else None
    optimizer.step()
    return StepOutput(step_loss, True, features, norm)


def _total_grad_norm(net: nn.Module) -> float:
    """``||(g_1, ..., g_n)||_2`` over the parameters that have a gradient (as ``clip_grad_norm_`` measures it)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in net.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def train_one_epoch(net: nn.Module, train_set: Dataset, sampler: GlobalBatchSampler,
                    optimizer: torch.optim.Optimizer, config: TrainConfig, *, epoch: int, device: torch.device,
                    dist: ProcessGroup, model_config: ModelConfig, progress: bool = False,
                    meter: MechanismMeter | None = None, kept: str = "no checkpoint was written",
                    on_step: Callable[[int, float, float, float | None], None] | None = None) -> dict[str, Any]:
    """Train ``epoch`` (0-based) of a run; returns the epoch's record (``loss`` (mean over its steps), ``lr``
    (at its first step), ``steps``, ``skipped_batches``, ``seconds``).

    ``config`` is the effective config (its ``workers``, ``amp`` resolved); batches where a rank has nothing to
    train on, or the global batch has fewer than two clips, are skipped (counted); clips that fail to load are
    merged over the ranks into ``train_set.failures`` and checked against its threshold. ``meter``: the
    mechanism's measures over the epoch's batches. ``kept``: what the error says of the last checkpoint.
    ``on_step(global step, loss, lr, grad norm)``: called after every optimiser step (TensorBoard's per-step
    scalars); the gradient norm is measured only then. ``config.limit_steps`` caps the epoch's batches (trained
    or skipped), and the progress bar's total is that cap.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (naming the epoch, the step and the batch's clips);
            nothing of that step is applied.
        marginnce_kit.data.DataError: more clips failed than the threshold allows (on every rank alike).
    """
    tracker = getattr(train_set, "failures", None)
    steps_per_epoch = min(len(sampler), config.limit_steps) if config.limit_steps else len(sampler)
    total_steps = steps_per_epoch * config.epochs
    loader = epoch_loader(train_set, sampler, config, epoch=epoch, device=device, rank=dist.rank)
    net.train()
    lr = lr_at_step(config, epoch * steps_per_epoch, total_steps)  # the epoch's first step
    loss_sum, steps, skipped, t0 = 0.0, 0, 0, time.time()
    # at most steps_per_epoch batches: no batch past --limit-steps is loaded, and the bar counts to the cap
    bar = tqdm(itertools.islice(loader, steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
               disable=not (progress and dist.is_main), leave=False, dynamic_ncols=True, total=steps_per_epoch)
    for batch in bar:
        items = 0 if batch is None else int(batch["image"].shape[0])
        failed = 1 if batch is None else len(batch["failures"])  # a None batch had only failures
        empty_ranks, total_items, total_failed = dist.step_plan(items, failed)
        if total_failed and tracker is not None:
            dist.merge_failures(tracker)
            tracker.check()  # raises DataError past the threshold (on every rank alike)
        if empty_ranks or total_items < 2:
            skipped += 1
            continue
        global_step = epoch * steps_per_epoch + steps + skipped
        step_lr = lr_at_step(config, global_step, total_steps)
        out = train_step(net, batch["image"].to(device, non_blocking=True),
                         batch["spectrogram"].to(device, non_blocking=True), optimizer, amp=config.amp,
                         reduce=dist.mean, return_features=meter is not None, lr=step_lr,
                         grad_norm=on_step is not None)
        if not out.updated:
            ids = [i for rank_ids in dist.gather(list(batch["id"])) for i in rank_ids]
            raise NonFiniteLossError(
                f"epoch {epoch + 1}, step {steps + skipped + 1}: the loss is {out.loss} on the batch of clips "
                f"{ids}; {kept}",
                "check these clips (python -m marginnce_kit.prepare --verify ROOT --ids LIST) and drop the broken "
                "ones, or lower --lr")
        if meter is not None and out.features is not None:
            s, w = mechanism_terms(model_config, *out.features)
            meter.update(list(batch["id"]), s, w)
        if on_step is not None:
            on_step(global_step, out.loss, step_lr, out.grad_norm)
        loss_sum += out.loss
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
    bar.close()
    if tracker is not None:
        dist.merge_failures(tracker)
        tracker.check()
    return {"epoch": epoch + 1, "loss": loss_sum / steps if steps else None, "lr": lr, "steps": steps,
            "skipped_batches": skipped, "seconds": round(time.time() - t0, 3)}
