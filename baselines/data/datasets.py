"""Audio-visual clip dataset over the on-disk layout ``frames/`` + ``audio/`` (upstream EZ-VSL ``datasets.py@95ff5bf``), with failure accounting.

Layout: ``<root>/frames/<id>.jpg`` (the clip's centre frame) and
``<root>/audio/<id>.wav`` (16 kHz). One item is a dict::

    {"image": float32 [3, 224, 224], "spectrogram": float32 [1, 257, 200], "id": str,
     "gt_map": float32 [224, 224]}      # only when annotations are given

Broken data is never replaced by another clip (upstream EZ-VSL silently returns
a random other clip). Instead:

* at construction, ``check_files()`` finds ids whose frame or wav file (or, with
  annotations, whose annotation) is missing; those ids are left out of the index
  and recorded in ``dataset.failures`` (a ``DataFailureTracker``);
* ``__getitem__`` returns a ``FailedSample(id, reason)`` when a file cannot be
  decoded or the clip breaks the acceptance rule that ``prepare`` and ``prepare --verify`` apply
  (``baselines.data.acceptance.clip_problems``: frame decodes in an 8-bit colour mode; audio
  decodes, 16 kHz, mono, at least 1 s, every sample finite), with the same reason ``--verify``
  prints. It does not record it itself: in a DataLoader worker process the
  dataset is a copy, so a record there would never reach the main process. The
  sentinel travels through ``collate_batch`` into ``batch["failures"]`` and the
  training/evaluation loop calls ``dataset.failures.update(batch["failures"])``,
  which records the ids and raises ``DataError`` once more than
  ``max_failures`` (a fraction of the split, default 1%) distinct clips failed.

Randomness (train split): after ``dataset.set_epoch(epoch, seed)`` the random crop and flip of a
clip are drawn from a private ``torch.Generator`` seeded with ``derive_seed(seed, "augment", epoch,
clip_id)``: a function of ``(seed, epoch, clip id)`` only, not of the process's global RNG, of the
DataLoader worker that loads the clip, of the batch it lands in or of the clips loaded before it.
Runs that split the same epoch over different worker counts, ranks or resumptions therefore see
the same images. Without ``set_epoch`` the draws come from torch's global RNG (as
``RandomCrop`` / ``RandomHorizontalFlip`` would).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import hashlib
import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .annotations import GT_FORMATS, GT_SIZE, gt_map, load_flickr_annotations, load_vggss_annotations
from .acceptance import ClipRejected, clip_problems, decode_audio, decode_frame, frame_problems
from .audio import CLIP_SAMPLES, log_spectrogram, waveform_from_samples

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "FailedSample",
    "DataFailureTracker",
    "derive_seed",
    "image_transform",
    "resize_frame",
    "augment_frame",
    "load_image",
    "load_frame",
    "resized_size",
    "AudioVisualDataset",
    "collate_batch",
    "collate",
    "load_annotations",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

#: Exceptions that mean "this clip's data is broken" (decoding errors, wrong sample rate, ...).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, EOFError)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (ints and strings), the same in every
    process and Python session (unlike ``hash()``, which is salted per process).

    ``seed = int.from_bytes(blake2b(repr(parts), digest_size=8)) mod 2**63``: independent-looking
    seeds for nearby tuples such as ``(0, "augment", 1, id)`` and ``(0, "augment", 2, id)``.
    """
    if not parts:
        raise ValueError("derive_seed: expected at least one int or str part, got none")
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise TypeError(f"derive_seed: expected int or str parts, got {type(p).__name__} {p!r}")
    digest = hashlib.blake2b(repr(tuple(parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class DataError(RuntimeError):
    """Too many clips of a split are missing or broken."""


@dataclass(frozen=True)
class FailedSample:
    """Sentinel returned by ``AudioVisualDataset.__getitem__`` for a clip that could not be loaded."""

    id: str
    reason: str


class DataFailureTracker:
    """Counts distinct failed clips of a split and stops the run past a threshold.

    ``check()`` raises ``DataError`` when ``count > max_failures * total`` (for
    ``max_failures`` a float in [0, 1)) or ``count > max_failures`` (an int is an
    absolute count). A clip that fails again (e.g. every epoch) counts once; its
    first reason is kept.

    With ``log_path`` every ``record`` is also appended to that file (one line
    ``id<TAB>reason``) and every read (``count``, ``failed``, ``check``, ``summary``)
    merges the file back in. A copy of the tracker in a DataLoader worker process
    (forked or spawned) appends to the same file, so failures met in workers are
    visible to the main process without any cooperation from the training loop.
    """

    def __init__(
        self,
        total: int,
        max_failures: float = 0.01,
        name: str = "dataset",
        log_path: str | Path | None = None,
    ) -> None:
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f"total must be a non-negative int, got {total!r}")
        if isinstance(max_failures, bool) or not isinstance(max_failures, (int, float)):
            raise TypeError(f"max_failures must be a float fraction or an int count, got {max_failures!r}")
        if isinstance(max_failures, float) and not 0.0 <= max_failures < 1.0:
            raise ValueError(f"max_failures as a fraction must be in [0, 1), got {max_failures!r}")
        if isinstance(max_failures, int) and max_failures < 0:
            raise ValueError(f"max_failures as a count must be >= 0, got {max_failures!r}")
        self.total = total
        self.max_failures = max_failures
        self.name = name
        self.log_path = None if log_path is None else Path(log_path)
        self._failed: dict[str, str] = {}

    @property
    def limit(self) -> float:
        """Largest number of failed clips that still passes ``check()``."""
        if isinstance(self.max_failures, float):
            return self.max_failures * self.total
        return float(self.max_failures)

    def record(self, clip_id: str, reason: str) -> None:
        """Remember that ``clip_id`` failed (no check; ``update`` records and checks)."""
        if not isinstance(clip_id, str) or not clip_id or any(c in clip_id for c in "\t\n\r"):
            raise ValueError(f"clip_id must be a non-empty single-line string without tabs, got {clip_id!r}")
        reason = " ".join(str(reason).split())
        if clip_id in self._failed:
            return
        self._failed[clip_id] = reason
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:  # one short append: atomic on POSIX
                fh.write(f"{clip_id}\t{reason}\n")

    def update(self, failures: Iterable[FailedSample | tuple[str, str]]) -> None:
        """Record every ``FailedSample`` / ``(id, reason)`` (e.g. ``batch["failures"]``), then ``check()``."""
        for f in failures:
            if isinstance(f, FailedSample):
                self.record(f.id, f.reason)
            else:
                clip_id, reason = f
                self.record(clip_id, reason)
        self.check()

    def _sync(self) -> None:
        if self.log_path is None or not self.log_path.is_file():
            return
        with open(self.log_path, "r", encoding="utf-8") as fh:
            for line in fh:
                clip_id, sep, reason = line.rstrip("\n").partition("\t")
                if sep:  # a line still being written by another process has no newline yet: skip
                    self._failed.setdefault(clip_id, reason)

    @property
    def count(self) -> int:
        self._sync()
        return len(self._failed)

    @property
    def failed(self) -> dict[str, str]:
        """``{id: reason}`` of the failed clips, in the order they were first seen (a copy)."""
        self._sync()
        return dict(self._failed)

    def exceeded(self) -> bool:
        return self.count > self.limit

    def check(self) -> None:
        """Raise ``DataError`` naming the first failed clips when the threshold is exceeded."""
        if self.exceeded():
            raise DataError(self.summary(limit=5))

    def summary(self, limit: int = 10) -> str:
        """Report: count, threshold and the first ``limit`` ids with their reasons."""
        items = list(self.failed.items())
        head = (
            f"{self.name}: {len(items)} of {self.total} clips missing or broken "
            f"(allowed: {self.limit:g}"
            + (f" = {self.max_failures:.2%} of the split" if isinstance(self.max_failures, float) else "")
            + ")"
        )
        if not items:
            return head
        lines = [f"  {i}: {r}" for i, r in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more")
        return head + "\n" + "\n".join(lines)


def _remove_owned_file(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker's copy
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def image_transform(split: str, image_size: int = 224):
    """The image pipeline (upstream EZ-VSL ``datasets.py@95ff5bf``) as one callable ``PIL.Image -> [3, size, size]`` float32.

    ``"train"``: ``Resize(int(1.1 * size), bicubic) -> RandomCrop(size) -> RandomHorizontalFlip ->
    ToTensor -> Normalize(ImageNet)`` (246 for 224); ``"test"``: ``Resize((size, size), bicubic) ->
    ToTensor -> Normalize(ImageNet)``. It is :func:`resize_frame` (deterministic, cacheable) followed by
    :func:`augment_frame` (the random crop and flip, drawn from torch's global RNG, then normalisation).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return lambda frame: augment_frame(resize_frame(frame, split, image_size), split, image_size)


def resized_size(height: int, width: int, split: str, image_size: int = 224) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` frame after :func:`resize_frame`: train keeps the aspect ratio
    with the shorter side ``int(1.1 * image_size)`` and the longer side ``int(short * long / shorter)``
    (torchvision ``Resize(int)``'s rule); test is ``image_size x image_size``.

    Raises:
        ValueError: ``split`` is not ``"train"`` / ``"test"``, or a side is not a positive int.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for name, v in (("height", height), ("width", width), ("image_size", image_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if split == "test":
        return image_size, image_size
    short = int(image_size * 1.1)
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def resize_frame(frame: Any, split: str, image_size: int = 224) -> torch.Tensor:
    """The deterministic part of the pipeline: bicubic resize of a frame to a uint8 ``[3, h, w]`` tensor
    (train: shorter side ``int(1.1 * size)``, see :func:`resized_size`; test: ``size x size``).

    ``frame`` is an RGB ``PIL.Image`` or a uint8 ``[3, H, W]`` tensor (:func:`load_frame`). A frame
    already at the output size (e.g. stored that way by ``prepare --frame-size``) is returned as is.
    Otherwise the resize is ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on
    uint8: Pillow's ``BICUBIC`` filter (Keys cubic, ``a = -0.5``, support scaled by the reduction
    factor, horizontal pass then vertical, each rounded to uint8), i.e. what torchvision's
    ``Resize(..., InterpolationMode.BICUBIC)`` computes on a PIL image, about 6x faster than Pillow
    on a 640 x 360 frame. The fixed-point rounding differs from Pillow's: the result is within one
    grey level of Pillow's at all but a few pixels of natural images (``tests/test_data_loading.py``
    measures and bounds it). On hard-edged synthetic content (binary noise, upscaling) Pillow 13's
    result matches a vertical-first order for some sizes, and pixels next to clipped overshoots then
    differ by more (up to 29 levels measured on 0/255 noise): the bound is for natural frames.

    Raises:
        TypeError: ``frame`` is neither a PIL image nor a uint8 tensor.
        ValueError: a tensor frame is not ``[3, H, W]``.
    """
    if isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"frame: expected a uint8 [3, H, W] tensor, got {frame.dtype} {tuple(frame.shape)}")
    else:
        from PIL import Image

        if not isinstance(frame, Image.Image):
            raise TypeError(f"frame must be a PIL.Image or a uint8 [3, H, W] tensor, got {type(frame).__name__}")
        if frame.mode != "RGB":
            raise ValueError(f"frame: expected an RGB PIL image, got mode {frame.mode!r}")
        import numpy as np

        frame = torch.from_numpy(np.array(frame, dtype=np.uint8)).permute(2, 0, 1)
    h, w = frame.shape[-2:]
    size = resized_size(int(h), int(w), split, image_size)
    if (h, w) == size:
        return frame
    out = torch.nn.functional.interpolate(frame[None], size=size, mode="bicubic", antialias=True)[0]
    return out.contiguous()


def augment_frame(
    frame: torch.Tensor, split: str, image_size: int = 224, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The random part (train): a ``size x size`` crop at a uniform position and a horizontal flip with
    probability 1/2, as ``RandomCrop`` and ``RandomHorizontalFlip`` draw them; then ``/ 255`` and
    ImageNet normalisation. ``frame`` is a uint8 ``[3, h, w]`` from :func:`resize_frame`.

    The three draws (top, left, flip) come from ``generator`` (a CPU ``torch.Generator``), or from
    torch's global RNG when it is ``None``. The test split draws nothing."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if split == "train":
        h, w = frame.shape[-2:]
        if h < image_size or w < image_size:
            raise ValueError(f"frame: expected at least {image_size} x {image_size} pixels to crop, got {h} x {w}")
        top = int(torch.randint(0, h - image_size + 1, size=(1,), generator=generator).item())
        left = int(torch.randint(0, w - image_size + 1, size=(1,), generator=generator).item())
        frame = frame[:, top:top + image_size, left:left + image_size]
        if torch.rand(1, generator=generator).item() < 0.5:
            frame = frame.flip(-1)
    # (x / 255 - mean) / std in place on the crop's float copy (the same float32 ops, one allocation)
    return frame.to(torch.float32).div_(255.0).sub_(_MEAN).div_(_STD)


def load_image(path: str | Path):
    """Decode an image file fully into an RGB ``PIL.Image``.

    Raises:
        ClipRejected: the file does not decode, or its colour mode is not one of
            ``acceptance.FRAME_MODES`` (the frame part of the acceptance rule).
    """
    image = decode_frame(path)
    problems = frame_problems(image)
    if problems:
        raise ClipRejected("; ".join(problems))
    return image.convert("RGB")


def load_frame(path: str | Path) -> torch.Tensor:
    """:func:`load_image` as a uint8 ``[3, H, W]`` RGB tensor, the layout :func:`resize_frame` works on
    (a channels-last view of one copy of Pillow's buffer; an RGB frame is not copied by ``convert``).

    Raises:
        ClipRejected: as :func:`load_image`.
    """
    image = decode_frame(path)
    problems = frame_problems(image)
    if problems:
        raise ClipRejected("; ".join(problems))
    return _rgb_tensor(image)


def _rgb_tensor(image) -> torch.Tensor:
    """A decoded ``PIL.Image`` of an accepted mode as uint8 ``[3, H, W]`` RGB (``convert("RGB")`` only
    when it is not RGB already)."""
    import numpy as np

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


class AudioVisualDataset(Dataset):
    """Frames + 3 s log spectrograms of the clips ``ids`` under ``root`` (see module doc).

    Args:
        root: directory holding ``frames/`` and ``audio/``.
        ids: clip ids (unique, e.g. from ``load_id_list``).
        split: ``"train"`` (random crop + flip, seeded per clip after ``set_epoch``) or
            ``"test"`` (deterministic resize).
        annotations: ``{id: boxes}`` (``load_annotations``); items then carry
            ``"gt_map"``. A clip without an annotation counts as missing.
        annotation_format: ``"vggss"`` or ``"flickr"`` (how ``gt_map`` reads the boxes).
        image_size: side of the network input (224).
        max_failures: allowed missing/broken clips, a fraction of ``len(ids)``
            (float in [0, 1)) or an absolute count (int).
        check_files: scan for missing files at construction (one ``stat`` per file).
        cache: keep decoded frames (RGB, before the random transform) and
            spectrograms in memory. The cache lives in the process that decodes:
            use it with ``num_workers=0`` (worker copies are discarded every epoch).
        failure_log: file shared by all processes for failure records (see
            ``DataFailureTracker``); by default a temporary file owned by this
            object, removed when it is garbage collected.

    Attributes:
        ids: the clips that are served (``all_ids`` minus the missing ones).
        failures: ``DataFailureTracker`` of this split (missing + broken clips).

    Raises:
        DataError: at construction when more clips are missing than allowed.
    """

    def __init__(
        self,
        root: str | Path,
        ids: Sequence[str],
        split: str = "train",
        annotations: Mapping[str, Sequence[Sequence[float]]] | None = None,
        annotation_format: str = "vggss",
        image_size: int = 224,
        max_failures: float = 0.01,
        check_files: bool = True,
        cache: bool = False,
        failure_log: str | Path | None = None,
    ) -> None:
        super().__init__()
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if annotation_format not in GT_FORMATS:
            raise ValueError(f"annotation_format must be one of {GT_FORMATS}, got {annotation_format!r}")
        if annotations is not None and not isinstance(annotations, Mapping):
            raise TypeError(f"annotations must be a mapping id -> boxes, got {type(annotations).__name__}")
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a sequence of clip ids, got {type(ids).__name__}")
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise ValueError(f"ids must be non-empty strings, got {bad[:3]!r}")
        if len(set(ids)) != len(ids):
            counts: dict[str, int] = {}
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
            dups = [i for i, c in counts.items() if c > 1]
            raise ValueError(f"ids must be unique, got duplicates {dups[:3]!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.root = Path(root)
        self.frames_dir = self.root / "frames"
        self.audio_dir = self.root / "audio"
        self.split = split
        self.annotations = annotations
        self.annotation_format = annotation_format
        self.image_size = image_size
        self.all_ids = ids
        self.cache = cache
        self._epoch_seed: tuple[int, int] | None = None  # (seed, epoch) after set_epoch
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if failure_log is None:
            fd, tmp = tempfile.mkstemp(prefix="av-failures-", suffix=".tsv")
            os.close(fd)
            weakref.finalize(self, _remove_owned_file, tmp, os.getpid())
            failure_log = tmp
        self.failures = DataFailureTracker(len(ids), max_failures, name=f"{self.root} [{split}]", log_path=failure_log)
        if check_files:
            for clip_id, reason in self.check_files():
                self.failures.record(clip_id, reason)
            self.failures.check()
        missing = set(self.failures.failed)
        self.ids = [i for i in ids if i not in missing]

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Draw this epoch's crops and flips from ``(seed, epoch, clip id)`` (see the module docstring).

        Call it before an epoch's DataLoader iterator is created: worker processes copy the dataset
        when the iterator starts (``persistent_workers=False``), and carry the epoch with them."""
        for name, v in (("epoch", epoch), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"set_epoch: {name} must be an int >= 0, got {v!r}")
        self._epoch_seed = (seed, epoch)

    def generator(self, clip_id: str) -> torch.Generator | None:
        """The private generator of ``clip_id``'s augmentation this epoch (``None`` before ``set_epoch``)."""
        if self._epoch_seed is None:
            return None
        seed, epoch = self._epoch_seed
        return torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, clip_id))

    def image_path(self, clip_id: str) -> Path:
        return self.frames_dir / f"{clip_id}.jpg"

    def audio_path(self, clip_id: str) -> Path:
        return self.audio_dir / f"{clip_id}.wav"

    def check_files(self) -> list[tuple[str, str]]:
        """``[(id, reason)]`` for clips whose frame, wav or annotation is missing (no decoding)."""
        for d in (self.frames_dir, self.audio_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"data directory not found: {d} (expected <root>/frames and <root>/audio)")
        out = []
        for clip_id in self.all_ids:
            reasons = []
            if not self.image_path(clip_id).is_file():
                reasons.append(f"missing frame {self.image_path(clip_id)}")
            if not self.audio_path(clip_id).is_file():
                reasons.append(f"missing audio {self.audio_path(clip_id)}")
            if self.annotations is not None and clip_id not in self.annotations:
                reasons.append("no annotation")
            if reasons:
                out.append((clip_id, "; ".join(reasons)))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def _decoded(self, clip_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The resized uint8 frame (before the random crop and flip) and the spectrogram."""
        hit = self._cache.get(clip_id)
        if hit is not None:
            return hit
        # the acceptance rule shared with prepare and --verify (acceptance.load_clip's steps, in its order;
        # clip_problems decides), raising ClipRejected with their reason
        image = decode_frame(self.image_path(clip_id))
        samples, rate = decode_audio(self.audio_path(clip_id))
        problems = clip_problems(image, (samples, rate))
        if problems:
            raise ClipRejected("; ".join(problems))
        frame = resize_frame(_rgb_tensor(image), self.split, self.image_size)
        # waveform_from_samples clips and averages sample by sample and then takes the centred
        # CLIP_SAMPLES: taking them first (same start) gives the same waveform from 3 s instead of 10
        n = samples.shape[0]
        if n > CLIP_SAMPLES:
            start = (n - CLIP_SAMPLES) // 2
            samples = samples[start:start + CLIP_SAMPLES]
        spectrogram = log_spectrogram(torch.from_numpy(waveform_from_samples(samples))).unsqueeze(0)
        decoded = (frame, spectrogram)
        if self.cache:
            self._cache[clip_id] = decoded
        return decoded

    def gt_map(self, clip_id: str) -> torch.Tensor:
        """Ground-truth map ``[224, 224]`` float32 of one annotated clip."""
        if self.annotations is None:
            raise ValueError("this dataset has no annotations (pass annotations=...)")
        if clip_id not in self.annotations:
            raise ValueError(f"no annotation for clip {clip_id!r}")
        return torch.from_numpy(gt_map(self.annotations[clip_id], self.annotation_format, GT_SIZE))

    def gt_maps(self) -> torch.Tensor:
        """Ground-truth maps of all served clips, ``[len(self), 224, 224]`` float32, in ``self.ids`` order."""
        if not self.ids:
            return torch.zeros(0, GT_SIZE, GT_SIZE)
        return torch.stack([self.gt_map(i) for i in self.ids])

    def load(self, index: int) -> dict[str, Any]:
        """The item at ``index``; decoding errors propagate (``__getitem__`` turns them into ``FailedSample``)."""
        clip_id = self.ids[index]
        frame, spectrogram = self._decoded(clip_id)
        generator = self.generator(clip_id) if self.split == "train" else None
        image = augment_frame(frame, self.split, self.image_size, generator)
        item: dict[str, Any] = {"image": image, "spectrogram": spectrogram, "id": clip_id}
        if self.annotations is not None:
            item["gt_map"] = self.gt_map(clip_id)
        return item

    def __getitem__(self, index: int) -> dict[str, Any] | FailedSample:
        """The item, or a ``FailedSample`` (also recorded in ``self.failures``) when its files cannot be decoded."""
        clip_id = self.ids[index]
        try:
            return self.load(index)
        except ClipRejected as exc:  # the acceptance rule's reason, as prepare --verify prints it
            failed = FailedSample(clip_id, exc.reason)
            self.failures.record(failed.id, failed.reason)
            return failed
        except DECODE_ERRORS as exc:
            failed = FailedSample(clip_id, f"{type(exc).__name__}: {exc}")
            self.failures.record(failed.id, failed.reason)
            return failed


def load_annotations(
    path: str | Path, format: str, ids: Iterable[str] | None = None
) -> dict[str, list[list[float]]]:
    """Boxes of a test split: ``"vggss"`` reads the ``vggss.json`` file ``path``; ``"flickr"`` the XML directory ``path``.

    Returns ``{id: boxes}`` for the ``ids`` that have an annotation (all annotated
    clips when ``ids`` is None); clips without one are left out, and
    ``AudioVisualDataset`` then counts them as missing.
    """
    if format == "vggss":
        boxes = load_vggss_annotations(path)
        if ids is None:
            return boxes
        return {i: boxes[i] for i in ids if i in boxes}
    if format == "flickr":
        xml_dir = Path(path)
        if ids is None:
            if not xml_dir.is_dir():
                raise FileNotFoundError(f"flickr annotation directory not found: {xml_dir}")
            ids = sorted(p.stem for p in xml_dir.glob("*.xml"))
        return load_flickr_annotations(xml_dir, ids, missing_ok=True)  # type: ignore[return-value]
    raise ValueError(f"format must be one of {GT_FORMATS}, got {format!r}")


def collate_batch(items: Sequence[dict[str, Any] | FailedSample]) -> dict[str, Any] | None:
    """Stack the good items of a batch (DataLoader ``collate_fn``); failed ones are dropped.

    Returns ``{"image": [B, 3, H, W], "spectrogram": [B, 1, 257, 200], "id": [B ids],
    ("gt_map": [B, 224, 224],) "failures": [FailedSample, ...]}`` with ``B >= 1`` the
    number of good items, or ``None`` when every item failed. The failures are
    already in the dataset's tracker (``__getitem__`` records them, across
    processes); ``batch["failures"]`` is for logging.
    """
    good = [it for it in items if not isinstance(it, FailedSample)]
    failures = [it for it in items if isinstance(it, FailedSample)]
    batch: dict[str, Any] = {"id": [it["id"] for it in good], "failures": failures}
    if not good:
        return None
    keys = set(good[0])
    for it in good[1:]:
        if set(it) != keys:
            raise ValueError(f"items have different keys: {sorted(keys)} vs {sorted(it)}")
    for key in sorted(keys - {"id"}):
        batch[key] = torch.stack([it[key] for it in good])
    return batch


#: Short name used by the trainer.
collate = collate_batch
