"""The training loop: build the model and the data of a config, train epoch by epoch, checkpoint, evaluate.

See :mod:`marginnce_kit.train` for what a run writes, its reproducibility and its data-parallel behaviour.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._checks import check_int
from ..cli import UsageError
from ..data.annotations import load_id_list
from ..data.datasets import AudioVisualDataset, collate_batch, load_annotations
from ..data.seeds import derive_seed
from ..io import atomic_write_text
from ..models import AudioVisualModel, build_model
from ..scoring import evaluate_model
from .checkpoint import CHECKPOINT_NAME, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from .config import RESUME_INDEPENDENT, ConfigError, TrainConfig, check_config, effective_config
from .distributed import ProcessGroup
from .records import Scalars, check_tensorboard, epoch_line, log_record, plot_curves, provenance
from .sampler import GlobalBatchSampler
from .schedule import lr_at_step

__all__ = ["train", "build_train_model", "build_train_set", "build_test_set", "RunExistsError",
           "NonFiniteLossError", "RUN_FILES"]

#: The files (and folder) of ``--out`` that make up a run; any of the first four means "holds a run".
RUN_FILES = ("config.json", CHECKPOINT_NAME, "metrics.jsonl", "final.json", "curves.png", "tensorboard")


class RunExistsError(UsageError, FileExistsError):
    """``out`` already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


class NonFiniteLossError(UsageError, FloatingPointError):
    """The loss of a step was NaN or infinite; the message names the epoch, the step and the batch's clips."""


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if config.device == "cuda" else torch.device("cpu")


def build_train_model(config: TrainConfig, distributed: bool = False,
                      device: torch.device | str = "cpu", load_pretrained: bool = True) -> AudioVisualModel:
    """The model a run trains: initialised from ``config.seed`` alone (the caller's global RNG state is
    left as it was), on ``device``; with ``distributed`` the loss gathers negatives across ranks
    (``config.gather_distributed``) and, on CUDA, BatchNorm becomes SyncBatchNorm
    (``config.sync_batchnorm``). The state dict has the same keys in every case.
    ``load_pretrained=False``: skip reading the ImageNet weights (a resumed run loads every weight)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config(distributed=distributed), load_pretrained=load_pretrained)
    if distributed and device.type == "cuda" and config.sync_batchnorm and config.norm == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def build_train_set(c: TrainConfig) -> Dataset:
    """The training split; items carry uint8 frames that ``collate_batch`` normalises a batch at a time."""
    return AudioVisualDataset(c.train_root, load_id_list(c.train_list), split="train",
                              max_failures=c.max_failures, cache=c.cache, normalize=False, image_size=c.image_size)


def build_test_set(root: str, test_list: str, annotations: str, annotation_format: str = "vggss",
                   max_failures: float = 0.01, cache: bool = False, image_size: int = 224) -> Dataset:
    """The annotated test split the evaluator reads (uint8 frames of side ``image_size``, normalised by
    ``collate_batch``; the ground-truth maps stay 224 x 224, the protocol's).

    Raises:
        ConfigError: ``test_list`` names no clip (before anything is trained or scored).
    """
    ids = load_id_list(test_list)
    if not ids:
        raise ConfigError(f"test_list: expected clip ids to test on, got none from {str(test_list)!r}",
                          "pass a test list that names annotated clips under --test-root")
    boxes = load_annotations(annotations, annotation_format, ids)
    return AudioVisualDataset(root, ids, split="test", annotations=boxes, annotation_format=annotation_format,
                              max_failures=max_failures, cache=cache, normalize=False, image_size=image_size)


def _restore(config: TrainConfig, ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.exists():
        raise CheckpointNotFoundError(f"resume: expected a checkpoint at {ckpt_path}, found none",
                                      "drop --resume to start a new run")
    state = load_checkpoint(ckpt_path)
    # as they apply on the device (a checkpoint written before configs were recorded so says amp=True on CPU)
    saved = asdict(effective_config(TrainConfig.from_dict(state["config"]))[0])
    now = asdict(effective_config(config)[0])
    diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v and k not in RESUME_INDEPENDENT}
    if diff:
        raise ConfigError(f"resume: the checkpoint's config differs from this run's ({{field: (checkpoint, now)}}): "
                          f"{diff}", "pass the checkpoint's values, or another --out for a new run")
    return state


def _held_run(out: Path) -> list[str]:
    """The run files in ``out`` that mark it as holding a run."""
    return [name for name in RUN_FILES[:4] if (out / name).exists()]


def _nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          train_set: Dataset | None = None, test_set: Dataset | None = None,
          stop_after_epoch: int | None = None, overwrite: bool = False, tensorboard: bool = False,
          log_epochs: bool = True, curves_every_epoch: bool = True) -> dict[str, Any]:
    """Train, checkpoint every epoch, evaluate; returns the final record (also ``out/final.json``):
    ``{"config": asdict(effective config), "provenance": {...}, "epochs_completed": int,
    "failed_clips": {"train": {id: reason}, ["test": {...}]}, ["eval": {...}]}``.

    Args:
        config: the run (validated here: ``TypeError`` / :class:`ConfigError` naming the field). What
            the run records and computes is :func:`effective_config` of it.
        out: output folder (created once the config, data and model are checked).
        resume: continue from ``out/checkpoint.pt`` (its config must equal the effective config except
            for :data:`RESUME_INDEPENDENT` fields).
        progress: progress bars (rank 0).
        train_set, test_set: prebuilt datasets (a study reuses its decoded clips across runs); by
            default they are built from the config's paths. A ``train_set`` with ``set_epoch(epoch,
            seed)`` (``AudioVisualDataset``) gets it called before every epoch.
        stop_after_epoch: return after this epoch's checkpoint, without the final evaluation and
            without ``final.json`` (the record then has ``"stopped": True``); ``--resume`` continues.
            Not part of the config: it changes when the process stops, not what the run computes.
        overwrite: replace the run ``out`` holds (its run files are deleted once the new run is checked).
        tensorboard: also write TensorBoard scalars to ``out/tensorboard`` (rank 0).
        log_epochs: print one line per epoch (rank 0), whatever ``progress``.
        curves_every_epoch: redraw ``out/curves.png`` after every epoch (a study's many short runs draw
            it once, at the end).

    Raises:
        ConfigError: a config value that cannot run here (also a ``ValueError``).
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointNotFoundError: ``resume`` without ``out/checkpoint.pt``.
        marginnce_kit.data.DataError: more clips of a split are missing or broken than
            ``max_failures`` allows (the message names them); under DDP on every rank alike.
        NonFiniteLossError: a step's loss is NaN or infinite (the message names the batch's clips);
            the last checkpoint is left as it was.
        marginnce_kit.models.WeightsUnavailableError: ``pretrained`` without reachable ImageNet weights.
    """
    if stop_after_epoch is not None:
        check_int("stop_after_epoch", stop_after_epoch, 1)
    check_config(config)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'",
                          "pass --device cpu")
    out = Path(out)
    if not resume and not overwrite and _held_run(out):
        raise RunExistsError(f"--out {out} already holds a run ({', '.join(_held_run(out))})",
                             "pass --resume to continue it, --overwrite to replace it, or another --out")
    if tensorboard:
        check_tensorboard()
    config, not_applied = effective_config(config)
    dist = ProcessGroup(config.device)
    try:
        check_config(config, dist.world_size)
        device = _device(config, dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        meta = {"provenance": {**provenance(device, dist.world_size), "not_applied": not_applied}}
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            return _train(config, out, resume, progress, train_set, test_set, stop_after_epoch, dist, device,
                          meta, tensorboard, log_epochs, curves_every_epoch)
    finally:
        dist.close()


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, train_set: Dataset | None,
           test_set: Dataset | None, stop_after_epoch: int | None, dist: ProcessGroup, device: torch.device,
           meta: dict[str, Any], tensorboard: bool, log_epochs: bool, curves_every_epoch: bool) -> dict[str, Any]:
    # 1. check everything that can fail before anything is written: checkpoint, model, data, batch size
    ckpt_path = out / CHECKPOINT_NAME
    start_epoch = 0
    history: list[dict[str, Any]] = []
    state = _restore(config, ckpt_path) if resume else None
    model = build_train_model(config, dist.enabled, device, load_pretrained=state is None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        history = list(state.get("history", []))
    if train_set is None:
        train_set = build_train_set(config)
    if test_set is None and config.test_list:
        test_set = build_test_set(config.test_root, config.test_list, config.annotations, config.annotation_format,
                                  config.max_failures, config.cache, config.image_size)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, dist.world_size, dist.rank, config.seed)  # type: ignore[arg-type]
    if len(sampler) == 0:
        n = len(train_set)  # type: ignore[arg-type]
        if n == 0:
            raise ConfigError(f"train_list: expected clip ids to train on, got none from {config.train_list!r}",
                              "pass a train list that names clips under --train-root")
        raise ConfigError(f"batch_size: expected at most the {n} clips of the train set (one global batch per step), "
                          f"got {config.batch_size}", f"pass --batch-size <= {n}")
    tracker = getattr(train_set, "failures", None)
    if tracker is not None and history:  # the clips that failed before the checkpoint still count
        for clip_id, reason in history[-1].get("failed_clips", {}).items():
            tracker.record(clip_id, reason)
    dist.barrier()  # every rank has checked the folder before rank 0 writes into it

    # 2. the run folder
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state is not None:
            if "history" in state:  # the log as it was at the checkpoint (drops later lines)
                atomic_write_text("".join(json.dumps(r) + "\n" for r in history), out / "metrics.jsonl")
        else:
            for name in RUN_FILES:  # an --overwrite: nothing of the old run stays beside the new one
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            atomic_write_text(json.dumps({**asdict(config), **meta}, indent=2), out / "config.json")
    dist.barrier()
    if stop_after_epoch is not None and stop_after_epoch <= start_epoch < config.epochs:
        return {"config": asdict(config), "epochs_completed": start_epoch, "stopped": True}

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    set_epoch = getattr(train_set, "set_epoch", None)
    scalars = Scalars(out / "tensorboard" if tensorboard and dist.is_main else None,
                       purge_step=start_epoch + 1 if state is not None else None)

    def evaluate(show: bool) -> dict[str, Any]:
        # every rank evaluates (same numbers, same time), so none idles at a barrier meanwhile
        return evaluate_model(model, test_set, device, config.batch_size, config.workers,  # type: ignore[arg-type]
                              progress=show and dist.is_main)

    def failed_clips() -> dict[str, dict[str, str]]:
        found = {"train": tracker.failed if tracker is not None else {}}
        test_failures = getattr(test_set, "failures", None)
        if test_failures is not None:
            found["test"] = test_failures.failed
        return found

    def curves(final_eval: dict[str, Any] | None = None) -> None:
        if dist.is_main:
            plot_curves(history, out / "curves.png", final_eval, config.epochs,
                        title=f"{config.model}, margin {config.margin:+.2f}")

    steps_per_epoch = min(len(sampler), config.limit_steps) if config.limit_steps else len(sampler)
    total_steps = steps_per_epoch * config.epochs
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(derive_seed(config.seed, "torch", epoch))  # any stray global-RNG use: (seed, epoch)
        sampler.set_epoch(epoch)
        if callable(set_epoch):
            set_epoch(epoch, config.seed)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate_batch,
                            generator=torch.Generator().manual_seed(derive_seed(config.seed, "loader", epoch, dist.rank)),
                            pin_memory=device.type == "cuda")
        net.train()
        lr = lr_at_step(config, epoch * steps_per_epoch, total_steps)  # the epoch's first step
        loss_sum, steps, skipped, t0 = 0.0, 0, 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and dist.is_main),
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            if config.limit_steps and steps + skipped >= config.limit_steps:
                break
            items = 0 if batch is None else int(batch["image"].shape[0])
            failed = 1 if batch is None else len(batch["failures"])  # a None batch had only failures
            empty_ranks, total_items, total_failed = dist.step_plan(items, failed)
            if total_failed and tracker is not None:
                dist.merge_failures(tracker)
                tracker.check()  # raises DataError past the threshold (on every rank alike)
            if empty_ranks or total_items < 2:
                skipped += 1
                continue
            image = batch["image"].to(device, non_blocking=True)
            spec = batch["spectrogram"].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at_step(config, epoch * steps_per_epoch + steps + skipped, total_steps)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss, _ = net(image, spec)
            # the mean over ranks of a rank's loss is the global-batch loss (marginnce_loss.distributed);
            # NaN on any rank makes it NaN on every rank, so all stop together, before any update
            step_loss = dist.mean(float(loss.detach()))
            if not math.isfinite(step_loss):
                ids = [i for rank_ids in dist.gather(list(batch["id"])) for i in rank_ids]
                kept = (f"the checkpoint of epoch {history[-1]['epoch']} ({ckpt_path}) is kept" if history
                        else "no checkpoint was written")
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}, step {steps + skipped + 1}: the loss is {step_loss} on the batch of clips "
                    f"{ids}; {kept}",
                    "check these clips (python -m marginnce_kit.prepare --verify ROOT --ids LIST) and drop the broken "
                    "ones, or lower --lr")
            loss.backward()
            optimizer.step()
            loss_sum += step_loss
            steps += 1
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        bar.close()
        if tracker is not None:
            dist.merge_failures(tracker)
            tracker.check()
        bad = _nonfinite_tensors(model.state_dict())
        if bad:  # never reached through a finite loss in practice; never saved either way
            raise NonFiniteLossError(f"epoch {epoch + 1}: non-finite weights in {bad[:5]} after a finite loss; "
                                     f"the previous checkpoint ({ckpt_path}) is kept", "lower --lr")
        record = {"epoch": epoch + 1, "loss": loss_sum / steps if steps else None, "lr": lr, "steps": steps,
                  "skipped_batches": skipped, "seconds": round(time.time() - t0, 3),
                  "data_failures": tracker.count if tracker is not None else 0,
                  "failed_clips": tracker.failed if tracker is not None else {}}
        if test_set is not None and config.eval_every and (epoch + 1) % config.eval_every == 0 \
                and epoch + 1 < config.epochs:
            record["eval"] = evaluate(False)
        history.append(record)
        if dist.is_main:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "config": asdict(config), "history": history}, ckpt_path)
            log_record(out, record)
            scalars.epoch(record)
            if curves_every_epoch:
                curves()
            if log_epochs:
                print(epoch_line(record, config.epochs), flush=True)
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            scalars.close()
            return {"config": asdict(config), "epochs_completed": epoch + 1, "stopped": True}

    final: dict[str, Any] = {"config": asdict(config), **meta, "epochs_completed": config.epochs}
    if test_set is not None:
        final["eval"] = evaluate(progress)
    final["failed_clips"] = failed_clips()
    if dist.is_main:
        if "eval" in final:
            log_record(out, {"final_eval": final["eval"]})
            scalars.eval(final["eval"], config.epochs)
        curves(final.get("eval"))
        atomic_write_text(json.dumps(final, indent=2), out / "final.json")
    dist.barrier()
    scalars.close()
    return final


