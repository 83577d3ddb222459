"""Writing a data set in the on-disk layout (marginnce_kit.layout): the clips, the id lists, the VGG-SS-style
annotations and ``meta.json``, atomically (a temporary folder renamed into place)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._checks import check_int_in
from ...io import read_json
from ...layout import AUDIO_DIR, AUDIO_SUFFIX, FRAME_SUFFIX, FRAMES_DIR, audio_path, frame_path, make_dirs
from .config import GENERATOR_VERSION, SPLITS, EmbeddedConfig, _stats_sha256, config_hash
from .image import _render_image
from .plan import BoxSizeSampler, ClipPlan, DatasetPlan, _sampler, plan_dataset
from .render import clip_audio


def _pixel_to_fraction(k: int, size: int) -> float:
    """The float nearest to ``k / size`` with ``int(x * size) == k``.

    The protocol truncates, and ``k/size*size`` can be ``k - eps``."""
    if k >= size:
        return 1.0
    x = k / size
    while int(x * size) < k:
        x = float(np.nextafter(x, 2.0))
    return x


def _box_fractions(box: tuple[int, int, int, int], size: int) -> list[float]:
    return [_pixel_to_fraction(int(v), size) for v in box]


def _write_clip(
    root: Path, config: EmbeddedConfig, plan: DatasetPlan, sampler: BoxSizeSampler, clip: ClipPlan
) -> dict[str, Any]:
    import soundfile as sf
    from PIL import Image

    image, box, _, distractors = _render_image(config, plan.classes, sampler, clip)
    Image.fromarray(image).save(frame_path(root, clip.clip_id), quality=config.jpeg_quality)
    src = plan.clips[clip.split][clip.audio_source]
    audio = clip_audio(config, plan, sampler, clip)
    sf.write(str(audio_path(root, clip.clip_id)), audio, config.sample_rate, subtype="PCM_16")
    size = config.image_size
    return {
        "split": clip.split,
        "class_index": clip.class_index,
        "class": plan.classes[clip.class_index].name,
        "bbox": [_box_fractions(box, size)],
        "bbox_px": [list(box)],
        "distractors": [
            {"class_index": c, "class": plan.classes[c].name, "bbox": _box_fractions(b, size), "bbox_px": list(b)}
            for c, b in distractors
        ],
        "audio_source": src.clip_id,
        "audio_class_index": plan.audio_class(clip),
        "silent": clip.silent,
        "offscreen_class_index": clip.offscreen_class,
    }


def _write_chunk(args: tuple[str, EmbeddedConfig, str, int, int]) -> list[tuple[str, dict[str, Any]]]:
    root, config, split, start, stop = args
    plan = plan_dataset(config)
    sampler = _sampler(config)
    return [(c.clip_id, _write_clip(Path(root), config, plan, sampler, c)) for c in plan.clips[split][start:stop]]


def _write_lines(path: Path, ids: Sequence[str], newline: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("".join(f"{i}{newline}" for i in ids))


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")


def _meta(config: EmbeddedConfig, plan: DatasetPlan, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "generator": "marginnce-loss synthetic audio-visual localisation set (marginnce_kit.data.synthetic)",
        "version": GENERATOR_VERSION,
        "config_hash": config_hash(config),
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "box_stats_sha256": _stats_sha256(config),
        "box_model": "one box per clip; envelope width/height quantiles of VGG-SS + Gaussian copula",
        "classes": [dataclasses.asdict(c) | {"heard": c.index in plan.heard_classes} for c in plan.classes],
        "heard_classes": list(plan.heard_classes),
        "unheard_classes": list(plan.unheard_classes),
        "files": {
            "frames": f"{FRAMES_DIR}/<id>{FRAME_SUFFIX}",
            "audio": f"{AUDIO_DIR}/<id>{AUDIO_SUFFIX}",
            "annotations": "vggss.json",
            "train": "train.txt",
            "test": "test.csv",
            "heard_train": "heard_train.txt",
            "heard_test": "heard_test.csv",
            "unheard_test": "unheard_test.csv",
            "val": "val.csv",
            "val_annotations": "val.json",
            "heard_val": "heard_val.csv",
            "objects": "objects.json",
        },
        "counts": counts,
        "faulty_positives": plan.faulty_positives(),
    }


def read_meta(root: str | Path) -> dict[str, Any]:
    """``meta.json`` of a generated dataset (``FileNotFoundError`` if it is not a complete dataset)."""
    path = Path(root) / "meta.json"
    return read_json(path, "dataset meta")


def is_complete(root: str | Path, config: EmbeddedConfig) -> bool:
    """True when ``root`` holds a complete dataset generated from ``config`` (matching ``config_hash``)."""
    try:
        meta = read_meta(root)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # TextFileError: not JSON (cut short)
        return False
    return meta.get("config_hash") == config_hash(config) and meta.get("version") == GENERATOR_VERSION


def _resolve_workers(workers: int | None, n: int) -> int:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
        if n < 200:  # process start-up costs more than it saves on tiny sets
            workers = 1
    check_int_in("workers", workers, 1, 256)
    return workers


def _populate(tmp: Path, config: EmbeddedConfig, workers: int) -> None:
    plan = plan_dataset(config)
    make_dirs(tmp)
    tasks = []
    for split in SPLITS:
        n = len(plan.clips[split])
        step = max(1, -(-n // (4 * workers)))
        tasks += [(str(tmp), config, split, s, min(s + step, n)) for s in range(0, n, step)]
    records: dict[str, dict[str, Any]] = {}
    if workers == 1:
        sampler = _sampler(config)
        for split in SPLITS:
            for c in plan.clips[split]:
                records[c.clip_id] = _write_clip(tmp, config, plan, sampler, c)
    else:
        import multiprocessing as mp

        # fork shares the imported modules (a spawned worker would re-import torch via marginnce_kit.data);
        # the workers use only numpy, Pillow and soundfile
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for chunk in pool.imap_unordered(_write_chunk, tasks):
                records.update(chunk)

    train = [c.clip_id for c in plan.clips["train"]]
    test = [c.clip_id for c in plan.clips["test"]]
    val = [c.clip_id for c in plan.clips["val"]]
    heard = set(plan.heard_classes)
    heard_train = [c.clip_id for c in plan.clips["train"] if c.class_index in heard]
    heard_test = [c.clip_id for c in plan.clips["test"] if c.class_index in heard]
    unheard_test = [c.clip_id for c in plan.clips["test"] if c.class_index not in heard]
    heard_val = [c.clip_id for c in plan.clips["val"] if c.class_index in heard]

    def annotations(ids: list[str]) -> list[dict[str, Any]]:
        return [{"file": i, "class": records[i]["class"], "bbox": records[i]["bbox"]} for i in ids]

    _write_json(tmp / "vggss.json", annotations(test))
    _write_json(tmp / "val.json", annotations(val))
    _write_lines(tmp / "val.csv", val, "\r\n")
    _write_lines(tmp / "heard_val.csv", heard_val, "\n")
    _write_lines(tmp / "train.txt", train, "\n")
    _write_lines(tmp / "test.csv", test, "\r\n")
    _write_lines(tmp / "heard_train.txt", heard_train, "\n")
    _write_lines(tmp / "heard_test.csv", heard_test, "\n")
    _write_lines(tmp / "unheard_test.csv", unheard_test, "\n")
    _write_json(tmp / "objects.json", {i: records[i] for i in train + test + val})
    counts = {
        "train": len(train),
        "test": len(test),
        "heard_train": len(heard_train),
        "heard_test": len(heard_test),
        "unheard_test": len(unheard_test),
        "val": len(val),
        "heard_val": len(heard_val),
        "faulty_positives": len(plan.faulty_positives()),
        "silent": sum(c.silent for c in plan.clips["train"]),
        "offscreen": sum(c.offscreen_class is not None for c in plan.clips["train"]),
    }
    _write_json(tmp / "meta.json", _meta(config, plan, counts), indent=1)


def generate(
    root: str | Path,
    config: EmbeddedConfig,
    *,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset of ``config`` to directory ``root`` and return ``root``.

    The files are written into a temporary sibling directory which is renamed to
    ``root`` at the end, so ``root`` is either absent or complete. If ``root`` already
    holds the complete dataset of this config, nothing is written. An existing ``root``
    with anything else in it raises ``FileExistsError`` unless ``overwrite=True``
    (then it is replaced). ``workers`` processes render clips (default: 1 for < 200
    clips, else ``min(2, cpu_count)``); the bytes do not depend on it.
    """
    if not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig, got {type(config).__name__}")
    root = Path(root)
    if is_complete(root, config):
        return root
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not the complete dataset of this config (hash {config_hash(config)}); "
            "pass overwrite=True to replace it"
        )
    workers = _resolve_workers(workers, config.num_train + config.num_test + config.num_val)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _populate(tmp, config, workers)
        if root.exists():
            if is_complete(root, config):  # another process finished first
                shutil.rmtree(tmp)
                return root
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            root.rename(trash)
            if trash.is_dir():
                shutil.rmtree(trash)
            else:
                trash.unlink()
        try:
            tmp.rename(root)
        except OSError:
            if is_complete(root, config):  # lost a race to an identical writer
                shutil.rmtree(tmp)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
