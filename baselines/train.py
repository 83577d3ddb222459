"""Train a baseline (LVS, EZ-VSL or the reference model) with marginNCE and evaluate it.

    python -m baselines.train --model reference --margin -0.2 \
        --train-root data/vggsound --train-list metadata/vggss_144k.txt \
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json \
        --out runs/reference_m-0.2

Writes into ``--out``: ``config.json``, ``checkpoint.pt`` (atomically, every epoch: model,
optimiser, epoch, config), ``metrics.jsonl`` (one JSON line per epoch, then the evaluation) and
``final.json``. ``--resume`` continues from ``checkpoint.pt`` and reaches the same final metrics as
an uninterrupted run: every epoch's randomness (shuffle, crops, flips) is seeded from
``(seed, epoch)``, not from whatever ran before.

Under ``torchrun --nproc_per_node N`` the trainer runs DDP with a ``DistributedSampler``; rank 0
logs and writes checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .models import BACKBONES, MODELS, ModelConfig, build_model

__all__ = ["TrainConfig", "train", "main", "atomic_save", "load_checkpoint"]


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside the checkpoint."""

    model: str = "reference"
    margin: float = -0.2
    backbone: str = "resnet18"
    dim: int = 512
    width: int = 64
    pretrained: bool = False
    train_root: str = ""
    train_list: str = ""
    test_root: str = ""
    test_list: str = ""
    annotations: str = ""
    annotation_format: str = "vggss"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    amp: bool = True
    max_failures: float = 0.01
    eval_every: int = 0  # 0: evaluate once at the end
    cache: bool = False  # keep decoded clips in memory (small datasets)
    gather_distributed: bool = True  # global-batch negatives under DDP (ezvsl, reference)
    limit_steps: int = 0  # > 0: stop each epoch after this many steps (smoke runs and tests)

    def model_config(self, distributed: bool = False) -> ModelConfig:
        return ModelConfig(model=self.model, margin=self.margin, backbone=self.backbone, dim=self.dim,
                           pretrained=self.pretrained, width=self.width,
                           gather_distributed=distributed and self.gather_distributed)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        return cls(**d)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str = "cpu") -> Dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


class _Distributed:
    """The process group when launched by torchrun, else a single process."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.enabled = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.enabled else 0
        self.world_size = dist.get_world_size() if self.enabled else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        self.dist.all_reduce(t)
        return float(t.item()) / self.world_size


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'")
        return torch.device("cuda", local_rank)
    if config.device != "cpu":
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {config.device!r}")
    return torch.device("cpu")


def _check_config(c: TrainConfig) -> None:
    if c.model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {c.model!r}")
    if c.backbone not in BACKBONES:
        raise ValueError(f"backbone: expected one of {BACKBONES}, got {c.backbone!r}")
    for name in ("train_root", "train_list"):
        if not getattr(c, name):
            raise ValueError(f"{name}: expected a path, got nothing")
    if c.epochs < 1 or c.batch_size < 2:
        raise ValueError(f"epochs/batch_size: expected epochs >= 1 and batch_size >= 2, got {c.epochs} and {c.batch_size}")
    if not math.isfinite(c.margin):
        raise ValueError(f"margin: expected a finite float, got {c.margin!r}")


def build_train_set(c: TrainConfig) -> Dataset:
    from .data import AudioVisualDataset, load_id_list

    return AudioVisualDataset(c.train_root, load_id_list(c.train_list), split="train",
                              max_failures=c.max_failures, cache=c.cache)


def build_test_set(root: str, test_list: str, annotations: str, annotation_format: str = "vggss",
                   max_failures: float = 0.01, cache: bool = False) -> Dataset:
    """The annotated test split the evaluator reads."""
    from .data import AudioVisualDataset, load_annotations, load_id_list

    ids = load_id_list(test_list)
    boxes = load_annotations(annotations, annotation_format, ids)
    return AudioVisualDataset(root, ids, split="test", annotations=boxes, annotation_format=annotation_format,
                              max_failures=max_failures, cache=cache)


def _loader(dataset: Dataset, c: TrainConfig, epoch: int, dist: _Distributed, shuffle: bool, drop_last: bool) -> DataLoader:
    from .data import collate

    gen = torch.Generator().manual_seed(_epoch_seed(c.seed, epoch))
    sampler = None
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=shuffle, seed=c.seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=c.batch_size // dist.world_size if dist.enabled else c.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=c.workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=False,
        pin_memory=c.device == "cuda",
    )


def _log(out: Path, record: Dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          train_set: Optional[Dataset] = None, test_set: Optional[Dataset] = None) -> Dict[str, Any]:
    """Train, checkpoint every epoch, evaluate; returns the final record (also ``out/final.json``).

    ``train_set`` / ``test_set`` may be passed in prebuilt (a study reuses its decoded clips across
    runs); by default they are built from the config's paths.
    """
    from tqdm.auto import tqdm

    from .evaluate import evaluate_model

    _check_config(config)
    out = Path(out)
    dist = _Distributed(config.device)
    device = _device(config, dist.local_rank)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    ckpt_path = out / "checkpoint.pt"
    start_epoch = 0
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(distributed=dist.enabled)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"resume: expected a checkpoint at {ckpt_path}, found none")
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        if asdict(saved) != asdict(config):
            diff = {k: (v, getattr(config, k)) for k, v in asdict(saved).items() if getattr(config, k) != v}
            raise ValueError(f"resume: the checkpoint's config differs from this run's: {diff}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
    elif dist.is_main:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        atomic_write_text(json.dumps(asdict(config), indent=2), out / "config.json")

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if train_set is None:
        train_set = build_train_set(config)
    if test_set is None and config.test_list:
        test_set = build_test_set(config.test_root, config.test_list, config.annotations, config.annotation_format,
                                  config.max_failures, config.cache)
    use_amp = config.amp and device.type == "cuda"

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(_epoch_seed(config.seed, epoch) + dist.rank)
        loader = _loader(train_set, config, epoch, dist, shuffle=True, drop_last=True)
        net.train()
        total, count, seen, t0 = 0.0, 0, 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and dist.is_main),
                   leave=False, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            if config.limit_steps and step >= config.limit_steps:
                break
            if batch is None or batch["image"].shape[0] < 2:
                continue
            image = batch["image"].to(device, non_blocking=True)
            spec = batch["spectrogram"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = net(image, spec)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * image.shape[0]
            count += image.shape[0]
            seen += 1
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        train_set.failures.check()
        record = {"epoch": epoch + 1, "loss": dist.mean(total / max(count, 1)), "steps": seen,
                  "seconds": round(time.time() - t0, 3), "data_failures": train_set.failures.count}
        if test_set is not None and config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 < config.epochs:
            record["eval"] = evaluate_model(model, test_set, device, config.batch_size, config.workers, progress=False)
        if dist.is_main:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "config": asdict(config)}, ckpt_path)
            _log(out, record)
        dist.barrier()

    final: Dict[str, Any] = {"config": asdict(config)}
    if test_set is not None and dist.is_main:
        final["eval"] = evaluate_model(model, test_set, device, config.batch_size, config.workers, progress=progress)
        _log(out, {"final_eval": final["eval"]})
    if dist.is_main:
        atomic_write_text(json.dumps(final, indent=2), out / "final.json")
    dist.barrier()
    return final


def add_data_arguments(p: argparse.ArgumentParser, train: bool = True) -> None:
    if train:
        p.add_argument("--train-root", required=True, help="folder with frames/<id>.jpg and audio/<id>.wav")
        p.add_argument("--train-list", required=True, help="training ids, one per line (e.g. vggss_144k.txt)")
    p.add_argument("--test-root", default="", help="test folder (frames/, audio/)")
    p.add_argument("--test-list", default="", help="test ids (e.g. vggss_test.csv)")
    p.add_argument("--annotations", default="", help="vggss.json, or the SoundNet-Flickr XML folder")
    p.add_argument("--annotation-format", default="vggss", choices=("vggss", "flickr"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m baselines.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--backbone", choices=BACKBONES, default=d.backbone)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--width", type=int, default=d.width, help="first-stage width of --backbone small")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights for the visual ResNet-18 (needs a download)")
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 autocast on CUDA")
    p.add_argument("--max-failures", type=float, default=d.max_failures,
                   help="stop when more than this fraction of a split is broken or missing")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--cache", action="store_true", help="keep decoded clips in memory")
    p.add_argument("--no-gather", dest="gather_distributed", action="store_false",
                   help="under torchrun: negatives from the local batch only")
    p.add_argument("--limit-steps", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    config = TrainConfig(**values)
    final = train(config, Path(args.out), resume=args.resume, progress=args.progress)
    if "eval" in final:
        e = final["eval"]
        print(f"{config.model} margin {config.margin:+.2f}: cIoU {e['ciou']:.2f}  AUC {e['auc']:.2f}  "
              f"mean cIoU {e['mean_ciou']:.2f}  (n = {e['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
