"""The trainer: :func:`train` builds the model and the data of a config, runs :func:`~.step.train_one_epoch` epoch
by epoch, checkpoints, scores the validation split every epoch (checkpoint selection) and evaluates at the end.

See :mod:`marginnce_kit.train` for what a run writes, its reproducibility and its data-parallel behaviour.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .._checks import check_int
from ..cli import UsageError
from ..data.annotations import load_id_list
from ..data.datasets import AudioVisualDataset, load_annotations
from ..data.seeds import derive_seed
from ..evaluation import evaluate_model
from ..io import atomic_write_text
from ..layout import RunLayout
from ..models import AudioVisualModel, build_model
from .accel import compile_loss_region
from .checkpoint import CheckpointNotFoundError, checkpoint_config, load_checkpoint, model_state, save_checkpoint
from .config import RESUME_INDEPENDENT, ConfigError, TrainConfig
from .diagnostics import ClipLabels, MechanismMeter
from .distributed import ProcessGroup
from .records import Scalars, check_tensorboard, epoch_line, log_record, plot_curves, provenance
from .runtime import check_runnable, effective_config, run_device
from .sampler import GlobalBatchSampler
from .step import NonFiniteLossError, build_optimizer, train_one_epoch

__all__ = ["train", "build_train_model", "build_train_set", "build_test_set", "RunExistsError",
           "NonFiniteLossError", "RUN_FILES", "SELECTIONS"]

#: The files (and folder) of ``--out`` that make up a run (:class:`~marginnce_kit.layout.RunLayout`).
RUN_FILES = tuple(p.name for p in RunLayout(Path(".")).run_files())

#: The checkpoint selections a run reports: the last epoch, the best epoch on the validation split.
SELECTIONS = ("last", "best_val")

#: The summary of a validation evaluation kept in each epoch's record.
_VAL_KEYS = ("ciou", "auc", "mean_ciou", "n")


class RunExistsError(UsageError, FileExistsError):
    """``out`` already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


def build_train_model(config: TrainConfig, distributed: bool = False,
                      device: torch.device | str = "cpu", load_pretrained: bool = True) -> AudioVisualModel:
    """The model a run trains: initialised from ``config.seed`` alone (the caller's global RNG state is
    left as it was), on ``device``; with ``distributed`` the loss gathers negatives across ranks
    (``config.gather_distributed``) and, on CUDA, BatchNorm becomes SyncBatchNorm
    (``config.sync_batchnorm``); ``config.loss_cuda_graphs``: the loss region as CUDA graphs
    (:func:`~.accel.compile_loss_region`). The state dict has the same keys in every case.
    ``load_pretrained=False``: skip reading the ImageNet weights (a resumed run loads every weight)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config(distributed=distributed), load_pretrained=load_pretrained)
    if distributed and device.type == "cuda" and config.sync_batchnorm and config.norm == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if config.loss_cuda_graphs and device.type == "cuda":  # refused off CUDA when the config is made
        compile_loss_region(model)
    return model


def build_train_set(c: TrainConfig) -> Dataset:
    """The training split; items carry uint8 frames that ``collate_batch`` normalises a batch at a time."""
    return AudioVisualDataset(c.train_root, load_id_list(c.train_list), split="train",
                              max_failures=c.max_failures, cache=c.cache, normalize=False, image_size=c.image_size,
                              decode_device=c.decode_device)


def build_test_set(root: str, test_list: str, annotations: str, annotation_format: str = "vggss",
                   max_failures: float = 0.01, cache: bool = False, image_size: int = 224) -> Dataset:
    """An annotated split the evaluator reads (test or validation; uint8 frames of side ``image_size``,
    normalised by ``collate_batch``; the ground-truth maps stay 224 x 224, the protocol's).

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


def build_val_set(c: TrainConfig) -> Dataset | None:
    """The validation split of checkpoint selection (``None`` without ``val_list``)."""
    if not c.val_list:
        return None
    return build_test_set(c.val_root or c.test_root, c.val_list, c.val_annotations or c.annotations,
                          c.annotation_format, c.max_failures, c.cache, c.image_size)


def _restore(config: TrainConfig, ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.exists():
        raise CheckpointNotFoundError(f"resume: expected a checkpoint at {ckpt_path}, found none",
                                      "drop --resume to start a new run")
    state = load_checkpoint(ckpt_path)
    # as they apply on the device (a checkpoint written before configs were recorded so says amp=True on CPU)
    saved = asdict(effective_config(checkpoint_config(state, ckpt_path))[0])
    now = asdict(effective_config(config)[0])
    diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v and k not in RESUME_INDEPENDENT}
    if diff:
        raise ConfigError(f"resume: the checkpoint's config differs from this run's ({{field: (checkpoint, now)}}): "
                          f"{diff}", "pass the checkpoint's values, or another --out for a new run")
    return state


def _nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def best_val_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch (1-based) of the best validation cIoU in ``history``; ties go to the later epoch, as upstream
    EZ-VSL's ``if cIoU >= best_cIoU`` (``train.py``@95ff5bf). ``None`` without validation records."""
    best: tuple[float, int] | None = None
    for r in history:
        if "val" in r and (best is None or r["val"]["ciou"] >= best[0]):
            best = (r["val"]["ciou"], r["epoch"])
    return None if best is None else best[1]


def best_test(history: list[dict[str, Any]], final_eval: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Upstream's protocol (the best epoch on the test split itself: optimistic, a selection on the data it
    reports), from the per-epoch test evaluations of ``eval_every = 1`` (``final_eval``: the last epoch's, which the
    final evaluation is); ``None`` unless every epoch has one."""
    evals = [(r["epoch"], r["eval"]) for r in history if "eval" in r]
    if final_eval is not None and history and "eval" not in history[-1]:
        evals.append((history[-1]["epoch"], final_eval))
    if not evals or len(evals) != len(history):
        return None
    epoch, top = max(evals, key=lambda e: (e[1]["ciou"], e[0]))
    return {"epoch": epoch, "optimistic": True, **{k: top[k] for k in _VAL_KEYS if k in top}}


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          train_set: Dataset | None = None, test_set: Dataset | None = None,
          stop_after_epoch: int | None = None, overwrite: bool = False, tensorboard: bool = False,
          log_epochs: bool = True, curves_every_epoch: bool = True, val_set: Dataset | None = None,
          labels: ClipLabels | None | bool = True) -> dict[str, Any]:
    """Train, checkpoint every epoch, select, evaluate; returns the final record (also ``out/final.json``):
    ``{"config": asdict(effective config), "provenance": {...}, "epochs_completed": int,
    "failed_clips": {"train": {id: reason}, ["test": {...}]}, ["eval": {...}], ["best_val": {"epoch", "val"}],
    ["eval_best_val": {...}], ["best_test": {...}]}``.

    Args:
        config: the run (checked when made). What the run records and computes is
            :func:`~.runtime.effective_config` of it.
        out: output folder (created once the config, data and model are checked).
        resume: continue from ``out/checkpoint.pt`` (its config must equal the effective config except
            for :data:`RESUME_INDEPENDENT` fields).
        progress: progress bars (rank 0).
        train_set, test_set, val_set: prebuilt datasets (a study reuses its decoded clips across runs); by
            default they are built from the config's paths. A ``train_set`` with ``set_epoch(epoch, seed)``
            (``AudioVisualDataset``) gets it called before every epoch.
        stop_after_epoch: return after this epoch's checkpoint, without the final evaluation and
            without ``final.json`` (the record then has ``"stopped": True``); ``--resume`` continues.
            Not part of the config: it changes when the process stops, not what the run computes.
        overwrite: replace the run ``out`` holds (its run files are deleted once the new run is checked).
        tensorboard: also write TensorBoard scalars to ``out/tensorboard`` (rank 0).
        log_epochs: print one line per epoch (rank 0), whatever ``progress``.
        curves_every_epoch: redraw ``out/curves.png`` after every epoch (a study's many short runs draw
            it once, at the end).
        labels: the training clips' correspondences for the mechanism's measures (``mechanism`` in each epoch's
            record, :mod:`~.diagnostics`); ``True``: read them from an embedded train root, when it is one;
            ``False`` / ``None``: none.

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
    check_runnable(config)
    layout = RunLayout(Path(out))
    if not resume and not overwrite and layout.held():
        raise RunExistsError(f"--out {layout.root} already holds a run ({', '.join(layout.held())})",
                             "pass --resume to continue it, --overwrite to replace it, or another --out")
    if tensorboard:
        check_tensorboard()
    if labels is True:
        labels = ClipLabels.from_embedded(config.train_root)
    config, not_applied = effective_config(config)
    dist = ProcessGroup(config.device)
    try:
        check_runnable(config, dist.world_size)
        device = run_device(config, dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        meta = {"provenance": {**provenance(device, dist.world_size), "not_applied": not_applied}}
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            run = _Run(config, layout, dist, device, meta, progress=progress, tensorboard=tensorboard,
                       log_epochs=log_epochs, curves_every_epoch=curves_every_epoch,
                       labels=labels if isinstance(labels, ClipLabels) else None)
            return run.fit(resume, train_set, test_set, val_set, stop_after_epoch)
    finally:
        dist.close()


class _Run:
    """One run's state while it trains (the model, its data, the history); :meth:`fit` is :func:`train`'s body."""

    def __init__(self, config: TrainConfig, layout: RunLayout, dist: ProcessGroup, device: torch.device,
                 meta: dict[str, Any], *, progress: bool, tensorboard: bool, log_epochs: bool,
                 curves_every_epoch: bool, labels: ClipLabels | None) -> None:
        self.config, self.layout, self.dist, self.device, self.meta = config, layout, dist, device, meta
        self.progress, self.tensorboard, self.log_epochs = progress, tensorboard, log_epochs
        self.curves_every_epoch, self.labels = curves_every_epoch, labels
        self.history: list[dict[str, Any]] = []
        self.train_set: Dataset | None = None

    def fit(self, resume: bool, train_set: Dataset | None, test_set: Dataset | None, val_set: Dataset | None,
            stop_after_epoch: int | None) -> dict[str, Any]:
        c, dist, layout = self.config, self.dist, self.layout
        # 1. check everything that can fail before anything is written: checkpoint, model, data, batch size
        state = _restore(c, layout.checkpoint) if resume else None
        model = build_train_model(c, dist.enabled, self.device, load_pretrained=state is None)
        optimizer = build_optimizer(model, c)
        start_epoch = 0
        if state is not None:
            model.load_state_dict(model_state(state))
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = state["epoch"]
            self.history = list(state.get("history", []))
        train_set = self.train_set = build_train_set(c) if train_set is None else train_set
        if test_set is None and c.test_list:
            test_set = build_test_set(c.test_root, c.test_list, c.annotations, c.annotation_format,
                                      c.max_failures, c.cache, c.image_size)
        val_set = build_val_set(c) if val_set is None else val_set
        sampler = GlobalBatchSampler(len(train_set), c.batch_size, dist.world_size, dist.rank, c.seed)  # type: ignore[arg-type]
        if len(sampler) == 0:
            n = len(train_set)  # type: ignore[arg-type]
            if n == 0:
                raise ConfigError(f"train_list: expected clip ids to train on, got none from {c.train_list!r}",
                                  "pass a train list that names clips under --train-root")
            raise ConfigError(f"batch_size: expected at most the {n} clips of the train set (one global batch per "
                              f"step), got {c.batch_size}", f"pass --batch-size <= {n}")
        tracker = getattr(train_set, "failures", None)
        if tracker is not None and self.history:  # the clips that failed before the checkpoint still count
            for clip_id, reason in self.history[-1].get("failed_clips", {}).items():
                tracker.record(clip_id, reason)
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it

        # 2. the run folder
        if dist.is_main:
            layout.root.mkdir(parents=True, exist_ok=True)
            if state is not None:
                if "history" in state:  # the log as it was at the checkpoint (drops later lines)
                    atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), layout.metrics)
            else:
                for path in layout.run_files():  # an --overwrite: nothing of the old run stays beside the new one
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                atomic_write_text(json.dumps({**asdict(c), **self.meta}, indent=2), layout.config)
        dist.barrier()
        if stop_after_epoch is not None and stop_after_epoch <= start_epoch < c.epochs:
            return {"config": asdict(c), "epochs_completed": start_epoch, "stopped": True}

        # 3. the epochs
        net: nn.Module = model
        if dist.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                      if self.device.type == "cuda" else None)
        scalars = Scalars(layout.tensorboard if self.tensorboard and dist.is_main else None,
                          purge_step=start_epoch + 1 if state is not None else None)
        for epoch in range(start_epoch, c.epochs):
            torch.manual_seed(derive_seed(c.seed, "torch", epoch))  # any stray global-RNG use: (seed, epoch)
            kept = (f"the checkpoint of epoch {self.history[-1]['epoch']} ({layout.checkpoint}) is kept"
                    if self.history else "no checkpoint was written")
            meter = MechanismMeter(self.labels) if self.labels is not None else None
            record = train_one_epoch(net, train_set, sampler, optimizer, c, epoch=epoch, device=self.device,
                                     dist=dist, model_config=model.config, progress=self.progress, meter=meter,
                                     kept=kept, on_step=scalars.step if scalars.active else None)
            record["data_failures"] = tracker.count if tracker is not None else 0
            record["failed_clips"] = tracker.failed if tracker is not None else {}
            if meter is not None:
                record["mechanism"] = meter.compute()
            bad = _nonfinite_tensors(model.state_dict())
            if bad:  # never reached through a finite loss in practice; never saved either way
                raise NonFiniteLossError(f"epoch {epoch + 1}: non-finite weights in {bad[:5]} after a finite loss; "
                                         f"the previous checkpoint ({layout.checkpoint}) is kept", "lower --lr")
            if test_set is not None and c.eval_every and (epoch + 1) % c.eval_every == 0 and epoch + 1 < c.epochs:
                record["eval"] = self.evaluate(model, test_set, False)
            if val_set is not None:
                val = self.evaluate(model, val_set, False)
                record["val"] = {k: val[k] for k in _VAL_KEYS}
            self.history.append(record)
            self.end_epoch(model, optimizer, record, scalars)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < c.epochs:
                scalars.close()
                return {"config": asdict(c), "epochs_completed": epoch + 1, "stopped": True}

        # 4. the final evaluations: the last weights and, with a validation split, the best epoch's
        final = self.finish(model, test_set, scalars)
        if dist.is_main and "eval" in final:
            scalars.eval(final["eval"], c.epochs)
            scalars.hparams(asdict(c), {k: final["eval"][k] for k in ("ciou", "auc", "mean_ciou")})
        scalars.close()
        return final

    def evaluate(self, model: nn.Module, dataset: Dataset, show: bool,
                 on_batch: Callable[[dict[str, Any], torch.Tensor], None] | None = None) -> dict[str, Any]:
        # under DDP each rank scores a shard and every rank gets the whole result
        return evaluate_model(model, dataset, self.device, self.config.batch_size, self.config.workers,
                              progress=show and self.dist.is_main, distributed=self.dist.enabled, on_batch=on_batch)

    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any],
                  scalars: Scalars) -> None:
        c, dist, layout = self.config, self.dist, self.layout
        if dist.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": record["epoch"],
                     "config": asdict(c), "history": self.history, "selection": "last"}
            save_checkpoint(state, layout.checkpoint)
            if "val" in record and best_val_epoch(self.history) == record["epoch"]:
                save_checkpoint({"model": state["model"], "epoch": record["epoch"], "config": state["config"],
                                 "selection": "best_val", "val": record["val"]}, layout.best_val)
            log_record(layout.root, record)
            scalars.epoch(record)
            if self.curves_every_epoch:
                self.curves()
            if self.log_epochs:
                print(epoch_line(record, c.epochs), flush=True)
        dist.barrier()

    def curves(self, final_eval: dict[str, Any] | None = None) -> None:
        if self.dist.is_main:
            plot_curves(self.history, self.layout.curves, final_eval, self.config.epochs,
                        title=f"{self.config.model}, margin {self.config.margin:+.2f}")

    def finish(self, model: AudioVisualModel, test_set: Dataset | None, scalars: Scalars) -> dict[str, Any]:
        c, dist, layout = self.config, self.dist, self.layout
        final: dict[str, Any] = {"config": asdict(c), **self.meta, "epochs_completed": c.epochs}
        if test_set is not None:
            drawn: list[bool] = []

            def draw(batch: dict[str, Any], maps: torch.Tensor) -> None:  # the first batch's maps, to TensorBoard
                if not drawn and dist.is_main:
                    from ..overlays import overlay_maps

                    scalars.maps(overlay_maps(batch["image"][:8], maps[:8], batch["gt_map"][:8]), c.epochs)
                    drawn.append(True)

            final["eval"] = self.evaluate(model, test_set, self.progress, draw if scalars.active else None)
        best = best_val_epoch(self.history)
        if best is not None:
            final["best_val"] = {"epoch": best, "val": next(r["val"] for r in self.history if r["epoch"] == best)}
            if test_set is not None:
                if best == c.epochs:  # the last epoch is the best: the same weights
                    final["eval_best_val"] = final["eval"]
                else:
                    last = {k: v.clone() for k, v in model.state_dict().items()}
                    model.load_state_dict(model_state(load_checkpoint(layout.best_val)))
                    final["eval_best_val"] = self.evaluate(model, test_set, False)
                    model.load_state_dict(last)
        top = best_test(self.history, final.get("eval"))
        if top is not None:
            final["best_test"] = top
        tracker = getattr(self.train_set, "failures", None)
        found = {"train": tracker.failed if tracker is not None else {}}
        test_failures = getattr(test_set, "failures", None)
        if test_failures is not None:
            found["test"] = test_failures.failed
        final["failed_clips"] = found
        if dist.is_main:
            if "eval" in final:
                log_record(layout.root, {"final_eval": final["eval"]})
            self.curves(final.get("eval"))
            atomic_write_text(json.dumps(final, indent=2), layout.final)
        dist.barrier()
        return final
