"""The device check's workers, child side (``python -m benchmarks.device_check --run-step NAME``): they build
the run with the trainer's own pieces (:mod:`marginnce_kit.training.step`: the loader, the optimiser, the step),
measure, and write their result as JSON."""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from marginnce_kit.training.config import TrainConfig
from marginnce_kit.training.step import build_optimizer

from ..machine import matmul_settings, write_text_atomic
from ..timing import sync as _sync
from .kernels import worker_kernels

__all__ = ["WORKERS"]


def _train_config(cfg: dict[str, Any]) -> TrainConfig:
    """The run the workers train, as the trainer resolves it on this machine
    (:func:`marginnce_kit.training.runtime.effective_config`: bfloat16 autocast on CUDA only, the method's weight
    decay)."""
    from marginnce_kit.training.config import TrainConfig
    from marginnce_kit.training.runtime import effective_config

    config = TrainConfig(model="reference", backbone=cfg["backbone"], width=cfg["width"], dim=cfg["dim"],
                         batch_size=cfg["batch"], train_root=cfg["train_root"], train_list=cfg["train_list"],
                         device=cfg["device"], workers=cfg["workers"], amp=True)
    return effective_config(config)[0]


def _loader(config: TrainConfig, device: torch.device, world_size: int = 1, rank: int = 0,
            epoch: int = 0) -> DataLoader:
    """The trainer's loader of ``epoch`` (:func:`marginnce_kit.training.step.epoch_loader` over its training set and
    sampler)."""
    from marginnce_kit.training.loop import build_train_set
    from marginnce_kit.training.sampler import GlobalBatchSampler
    from marginnce_kit.training.step import epoch_loader

    train_set = build_train_set(config)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, world_size, rank, config.seed)  # type: ignore[arg-type]
    return epoch_loader(train_set, sampler, config, epoch=epoch, device=device, rank=rank)


def _preload(loader, device: torch.device, limit: int) -> dict[str, Any]:
    """Up to ``limit`` batches of ``loader`` moved to ``device``; the loader's time in all and after its first batch
    (the workers' start excluded)."""
    batches, failures, clips, first = [], 0, 0, None
    start = time.perf_counter()
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        if batch is None:
            failures += 1
            continue
        failures += len(batch["failures"])
        clips += int(batch["image"].shape[0])
        batches.append(
            (batch["image"].to(device, non_blocking=True), batch["spectrogram"].to(device, non_blocking=True))
        )
        if len(batches) >= limit:
            break
    _sync(device)
    end = time.perf_counter()
    later = clips - (int(batches[0][0].shape[0]) if batches else 0)
    return {
        "batches": batches,
        "failures": failures,
        "clips": clips,
        "seconds": end - start,
        "clips_per_s_after_first": later / (end - first) if first is not None and later > 0 and end > first else None,
    }


def _trainer_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, reduce: Callable[[float], float] = float
) -> Callable[[Tensor, Tensor], float]:
    """The trainer's own step (:func:`marginnce_kit.training.step.train_step`) on a batch already on the device;
    returns the step's global-batch loss (a host float, as the trainer reads it; ``reduce``: the ranks' mean)."""
    from marginnce_kit.training.step import train_step

    def step(image: Tensor, spec: Tensor) -> float:
        return train_step(net, image, spec, optimizer, amp=config.amp, reduce=reduce).loss

    return step


def _pipeline(step: Callable[[Tensor, Tensor], float], config: TrainConfig, device: torch.device,
              steps: int) -> dict[str, Any]:
    """Loader and step together, as the trainer's epoch runs them: a fresh loader (epoch 1), each batch moved to
    the device and stepped on; the rate counts the ``steps`` batches after the first (the workers' start and the
    first batch excluded)."""
    loader = _loader(config, device, epoch=1)
    clips, done, losses = 0, 0, []
    t0 = None
    for batch in loader:
        if batch is None:
            continue
        losses.append(step(batch["image"].to(device, non_blocking=True),
                           batch["spectrogram"].to(device, non_blocking=True)))
        if t0 is None:
            _sync(device)
            t0 = time.perf_counter()
            continue
        clips += int(batch["image"].shape[0])
        done += 1
        if done >= steps:
            break
    _sync(device)
    seconds = time.perf_counter() - t0 if t0 is not None else 0.0
    return {"pipeline_steps": done, "pipeline_clips": clips, "pipeline_seconds": round(seconds, 3),
            "pipeline_clips_per_s": clips / seconds if done and seconds > 0 else None,
            "pipeline_losses_finite": all(math.isfinite(v) for v in losses)}


def _cuda_switches(model: nn.Module, config: TrainConfig, device: torch.device, loss_only: Callable[[], None],
                   loss_inputs: tuple[Tensor, Tensor], step: Callable[[], object], rounds: int,
                   batches: int) -> dict[str, Any]:
    """The explicit GPU switches, measured (CUDA only): ``--decode-device cuda`` (the loader alone, frames decoded
    by nvJPEG in this process) and ``--loss-cuda-graphs`` (the loss region as CUDA graphs, its share of a step,
    timed interleaved with the step and the plain loss). An error is recorded, not raised."""
    from dataclasses import replace

    from marginnce_kit.training.accel import reduce_overhead

    from ..timing import interleaved, median_ratio

    out: dict[str, Any] = {}
    try:
        pre = _preload(_loader(replace(config, decode_device="cuda", workers=0), device), device, batches)
        out["gpu_decode_loader_clips_per_s_after_first_batch"] = pre["clips_per_s_after_first"]
        out["gpu_decode_data_failures"] = pre["failures"]
    except Exception as error:  # noqa: BLE001 -- recorded; the slice's other numbers stand
        out["gpu_decode_error"] = f"{type(error).__name__}: {error}"[:500]
    img, aud = loss_inputs
    try:
        criterion = cast(Callable[..., Any], model.criterion)  # the model's loss (a module or a function)
        region = reduce_overhead(criterion.forward if isinstance(criterion, nn.Module) else criterion)

        def loss_graphs() -> None:
            img.grad = aud.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss = region(img, aud)
            loss.backward()

        for _ in range(3):  # cudagraph trees record on a later call than the first
            loss_graphs()
        times = interleaved({"step": step, "loss": loss_only, "graphs": loss_graphs}, rounds, device)
        out.update({"loss_ms_cuda_graphs": 1e3 * statistics.median(times["graphs"]),
                    "loss_share_cuda_graphs": median_ratio(times["graphs"], times["step"]),
                    "loss_share_same_rounds": median_ratio(times["loss"], times["step"])})
    except Exception as error:  # noqa: BLE001
        out["cuda_graphs_error"] = f"{type(error).__name__}: {error}"[:500]
    return out


def worker_train_slice(cfg: dict[str, Any], on_partial: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
    """The training slice: the loader alone (preloading the batches), the step alone (on the preloaded batches),
    the loss's share of the step, then loader and step together (:func:`_pipeline`)."""
    from marginnce_kit.train import build_train_model
    from marginnce_loss import LocalizationMarginNCE, _compiled

    from ..timing import interleaved, median_ratio

    device = torch.device(cfg["device"])
    config = _train_config(cfg)
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        model = build_train_model(config, distributed=False, device=device)
        model.train()
        optimizer = build_optimizer(model, config)
        use_amp = config.amp
        loader = _loader(config, device)
        pre = _preload(loader, device, cfg["preload_batches"])
        batches = pre["batches"]
        if not batches:
            raise RuntimeError("the embedded training set gave no batch")
        step = _trainer_step(model, optimizer, config)

        def nth(i: int):
            return batches[i % len(batches)]

        _sync(device)
        t0 = time.perf_counter()
        step(*nth(0))
        _sync(device)
        first_step_s = time.perf_counter() - t0
        for i in range(1, cfg["warmup_steps"]):
            step(*nth(i))
        _sync(device)
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        losses = []
        t0 = time.perf_counter()
        for i in range(cfg["timed_steps"]):
            losses.append(step(*nth(cfg["warmup_steps"] + i)))
        _sync(device)
        timed_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
        loss_values = torch.tensor(losses, dtype=torch.float64)

        # the loss's share: the loss's forward + backward on one step's features vs the whole step
        image, spec = nth(0)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            img, aud = model.encode(image, spec)
        img, aud = img.detach().requires_grad_(), aud.detach().requires_grad_()

        def loss_only() -> None:
            img.grad = aud.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model.criterion(img, aud)
            loss.backward()

        loss_only()
        times = interleaved({"step": lambda: step(image, spec), "loss": loss_only}, cfg["share_rounds"], device)
        if on_partial is not None:
            on_partial({"loader_clips_per_s_after_first_batch": pre["clips_per_s_after_first"],
                        "step_ms": 1e3 * timed_s / cfg["timed_steps"], "note": "cut before the pipeline"})
        pipe = _pipeline(step, config, device, cfg["pipeline_steps"])
        switches = {} if device.type != "cuda" else _cuda_switches(
            model, config, device, loss_only, (img, aud), lambda: step(image, spec), cfg["share_rounds"],
            cfg["preload_batches"])
        caught = [str(r.message)[:300] for r in records if issubclass(r.category, (RuntimeWarning, UserWarning))]
    kernel = _compiled.KERNELS["thresholded_loss"]
    criterion = model.criterion
    if not isinstance(criterion, LocalizationMarginNCE):
        raise TypeError(
            f"model.criterion: expected a LocalizationMarginNCE (the reference model's), got {type(criterion).__name__}"
        )
    backend = criterion.backend
    resolved = _compiled.resolve_backend(backend, device)
    batch = int(batches[0][0].shape[0])
    gib = 2.0**30
    results = {
        "model": "reference",
        "backbone": config.backbone,
        "dim": config.dim,
        "batch": batch,
        "image": list(batches[0][0].shape[1:]),
        "spectrogram": list(batches[0][1].shape[1:]),
        "feature_map": list(img.shape[1:]),
        "feature_dtype": str(img.dtype).replace("torch.", ""),
        "autocast": "bfloat16" if use_amp else None,
        "optimizer": "Adam",
        "loss_backend": backend,
        "loss_backend_resolved": resolved,
        "compiled_fallback": None
        if kernel.failure is None
        else f"{type(kernel.failure).__name__}: {kernel.failure}"[:500],
        "loader_workers": config.workers,
        "loader_clips": pre["clips"],
        "loader_seconds": round(pre["seconds"], 3),
        "loader_clips_per_s": pre["clips"] / pre["seconds"] if pre["seconds"] > 0 else None,
        "loader_clips_per_s_after_first_batch": pre["clips_per_s_after_first"],
        "resident_batches": len(batches),
        "data_failures": pre["failures"],
        "first_step_s": round(first_step_s, 3),
        "warmup_steps": cfg["warmup_steps"],
        "timed_steps": cfg["timed_steps"],
        "timed_seconds": round(timed_s, 3),
        "step_ms": 1e3 * timed_s / cfg["timed_steps"],
        "clips_per_s": batch * cfg["timed_steps"] / timed_s,
        "loss_first": float(loss_values[0]),
        "loss_last": float(loss_values[-1]),
        "loss_min": float(loss_values.min()),
        "loss_max": float(loss_values.max()),
        "resident_GiB": resident / gib if device.type == "cuda" else None,
        "peak_allocated_GiB": peak / gib if peak is not None else None,
        "peak_reserved_GiB": reserved / gib if reserved is not None else None,
        "share_rounds": cfg["share_rounds"],
        "step_ms_interleaved": 1e3 * statistics.median(times["step"]),
        "loss_ms": 1e3 * statistics.median(times["loss"]),
        "loss_share": median_ratio(times["loss"], times["step"]),
        "warnings": sorted(set(caught))[:10],
        **pipe,
        "switches": switches,  # CUDA only: --decode-device cuda, --loss-cuda-graphs
        # the loader alone (after its first batch) against the step alone: >= 1 when the loader keeps up
        "loader_vs_step": (pre["clips_per_s_after_first"] / (batch * cfg["timed_steps"] / timed_s)
                           if pre["clips_per_s_after_first"] else None),
        "matmul": matmul_settings(),
    }
    results["checks"] = {
        "loss_finite": bool(torch.isfinite(loss_values).all()) and pipe["pipeline_losses_finite"],
        "no_data_failures": pre["failures"] == 0,
        "no_compiled_fallback": kernel.failure is None,
    }
    return results


def worker_ddp(cfg: dict[str, Any],
               on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """One-process torchrun: the process group (NCCL on CUDA, gloo on CPU), an ``all_reduce``, DDP against the plain
    model on one batch, then the trainer's steps (``on_partial``: unused, its result comes at once at the end)."""
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from marginnce_kit.train import build_train_model
    from marginnce_kit.training.distributed import ProcessGroup

    cuda = cfg["device"] == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    t0 = time.perf_counter()
    dist.init_process_group(backend)
    init_s = time.perf_counter() - t0
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        probe = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(probe)
        all_reduce_ok = bool(torch.all(probe == world * (world + 1) / 2))

        config = _train_config(cfg)
        ddp_model = build_train_model(config, distributed=True, device=device)
        plain = build_train_model(config, distributed=False, device=device)
        sync_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in ddp_model.modules())
        net = DistributedDataParallel(ddp_model, device_ids=[local_rank] if cuda else None)
        loader = _loader(config, device, world, rank)
        pre = _preload(loader, device, cfg["steps"] + 1)
        image, spec = pre["batches"][0]
        use_amp = config.amp

        def loss_and_grads(model, params):
            for p in params:
                p.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = model(image, spec)
            loss.backward()
            return loss.detach().float(), torch.cat([p.grad.float().flatten() for p in params])

        loss_ddp, grad_ddp = loss_and_grads(net, list(ddp_model.parameters()))
        loss_plain, grad_plain = loss_and_grads(plain, list(plain.parameters()))
        loss_rel = float((loss_ddp - loss_plain).abs() / loss_plain.abs().clamp_min(1e-30))
        grad_rel = float((grad_ddp - grad_plain).norm() / grad_plain.norm().clamp_min(1e-30))

        optimizer = build_optimizer(ddp_model, config)
        step = _trainer_step(net, optimizer, config, reduce=ProcessGroup(cfg["device"]).mean)
        _sync(device)
        t0 = time.perf_counter()
        losses = [step(*pre["batches"][1 + i % max(1, len(pre["batches"]) - 1)]) for i in range(cfg["steps"])]
        _sync(device)
        steps_s = time.perf_counter() - t0
        values = torch.tensor(losses, dtype=torch.float64)
        # every rank agrees on the mean loss (the trainer's Distributed.mean)
        mean = torch.tensor([float(values.mean())], dtype=torch.float64, device=device)
        dist.all_reduce(mean)
    finally:
        net = step = None  # type: ignore[assignment]  # drop the references to the DDP wrapper
        gc.collect()  # the DDP cycles go before the group (marginnce_kit.training.distributed.ProcessGroup.close)
        dist.destroy_process_group()
    if rank != 0:
        return None
    # tolerances: both models run the same kernels in one process; bfloat16 autocast and cuDNN's
    # algorithm choice allow small differences on CUDA, none are expected on CPU
    loss_tol, grad_tol = (1e-3, 1e-2) if use_amp else (1e-6, 1e-5)
    return {
        "backend": backend,
        "world_size": world,
        "init_seconds": round(init_s, 3),
        "all_reduce_ok": all_reduce_ok,
        "sync_batchnorm_layers": sync_bn,
        "gather_distributed": ddp_model.config.gather_distributed,
        "batch": int(image.shape[0]),
        "loss_ddp": float(loss_ddp),
        "loss_plain": float(loss_plain),
        "loss_rel_diff": loss_rel,
        "grad_rel_diff": grad_rel,
        "loss_rel_tol": loss_tol,
        "grad_rel_tol": grad_tol,
        "steps": cfg["steps"],
        "steps_seconds": round(steps_s, 3),
        "step_losses": [float(v) for v in values],
        "checks": {
            "all_reduce": all_reduce_ok,
            "ddp_loss_equals_plain": loss_rel <= loss_tol,
            "ddp_grad_equals_plain": grad_rel <= grad_tol,
            "losses_finite": bool(torch.isfinite(values).all()),
            "sync_batchnorm_on_cuda": (sync_bn > 0) == cuda,
        },
    }


#: ``--run-step NAME``: ``worker(config, on_partial)``; ``on_partial(result so far)`` is written as
#: ``<name>.partial.json`` beside the result, so a worker killed at its limit still leaves what it measured.
WORKERS: dict[str, Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any] | None]] = {
    "kernels": worker_kernels,
    "train_slice": worker_train_slice,
    "ddp": worker_ddp,
}


def _run_worker(name: str, config_path: Path, result_path: Path) -> int:
    cfg = json.loads(config_path.read_text())
    partial = result_path.with_name(f"{name}.partial.json")
    result = WORKERS[name](cfg, lambda so_far: write_text_atomic(partial, json.dumps(so_far, indent=1)))
    if result is not None:
        write_text_atomic(result_path, json.dumps(result, indent=1))
    return 0
