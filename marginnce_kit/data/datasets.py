"""Audio-visual clip dataset over the on-disk layout ``frames/`` + ``audio/`` (upstream EZ-VSL ``datasets.py@95ff5bf``),
with failure accounting.

Layout (:mod:`marginnce_kit.layout`): ``<root>/frames/<id>.jpg`` (the clip's center frame; ``<id>.png`` in a root
whose ``prepare_report.json`` records ``"frame_format": "png"``, ``prepare --frame-format png``) and
``<root>/audio/<id>.wav`` (16 kHz). One item is a dict::

    {"image": float32 [3, 224, 224], "spectrogram": float32 [1, 257, 200], "id": str,
     "gt_map": float32 [224, 224]}      # only when annotations are given

With ``normalize=False`` an item carries ``"frame"``, the uint8 ``[3, 224, 224]`` crop, instead of
``"image"``, and ``collate_batch`` normalises the stacked batch into ``"image"`` (the same float32
values: one conversion of a uint8 batch instead of one float copy per clip and a float stack; the
trainer and the evaluator read their splits this way).

Broken data is never replaced by another clip (upstream EZ-VSL silently returns
a random other clip). Instead:

* at construction, ``check_files()`` finds ids whose frame or wav file (or, with
  annotations, whose annotation) is missing; those ids are left out of the index
  and recorded in ``dataset.failures`` (a ``DataFailureTracker``);
* ``__getitem__`` returns a ``FailedSample(id, reason)`` when a file cannot be
  decoded or the clip breaks the acceptance rule that ``prepare`` and ``prepare --verify`` apply
  (``marginnce_kit.data.acceptance.clip_problems``: frame decodes in an 8-bit colour mode; audio
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

import os
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .._checks import check_int
from ..layout import AUDIO_DIR, FRAMES_DIR, audio_path, check_frame_format, frame_path, root_frame_format
from .acceptance import ClipRejected, audio_part, load_clip
from .annotations import GT_FORMATS, GT_SIZE, gt_map, load_flickr_annotations, load_vggss_annotations
from .audio import CLIP_SAMPLES, log_spectrogram, waveform_from_samples
from .failures import DECODE_ERRORS, DataError, DataFailureTracker, FailedSample, _remove_owned_file
from .frames import (
    DECODE_DEVICES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    _rgb_tensor,
    augment_frame,
    crop_and_flip,
    decode_jpeg_frame,
    image_transform,
    load_frame,
    load_image,
    normalize_frames,
    resize_frame,
    resized_size,
)
from .seeds import derive_seed

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
    "crop_and_flip",
    "normalize_frames",
    "load_image",
    "load_frame",
    "resized_size",
    "AudioVisualDataset",
    "collate_batch",
    "load_annotations",
]


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
        normalize: ``True``: items carry the normalised float32 ``"image"``; ``False``: the uint8
            ``"frame"`` crop, which ``collate_batch`` normalises a batch at a time (same values).
        max_failures: allowed missing/broken clips, a fraction of ``len(ids)``
            (float in [0, 1)) or an absolute count (int).
        check_files: scan for missing files at construction (one ``stat`` per file).
        cache: keep decoded frames (RGB, before the random transform) and
            spectrograms in memory. The cache lives in the process that decodes:
            use it with ``num_workers=0`` (worker copies are discarded every epoch).
        decode_device: ``"cpu"`` (Pillow, in the loader's workers) or ``"cuda"`` (the frames decoded by nvJPEG,
            :func:`~marginnce_kit.data.frames.decode_jpeg_frame`, in the process that reads the dataset: use it with
            ``num_workers=0``; items then hold CUDA frames). JPEG frames only on CUDA (a png root is a ``ValueError``).
        failure_log: file shared by all processes for failure records (see
            ``DataFailureTracker``); by default a temporary file owned by this
            object, removed when it is garbage collected.
        frame_format: ``"jpg"`` or ``"png"``, the frames' suffix; ``None`` (default): the format the root was
            prepared with, ``"frame_format"`` of ``<root>/prepare_report.json`` (``"jpg"`` without a report:
            :func:`marginnce_kit.layout.root_frame_format`).

    Attributes:
        ids: the clips that are served (``all_ids`` minus the missing ones).
        failures: ``DataFailureTracker`` of this split (missing + broken clips).

    Raises:
        DataError: at construction when more clips are missing than allowed.
        ValueError: a bad argument; an unreadable ``prepare_report.json``; ``decode_device="cuda"`` on a png root.
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
        normalize: bool = True,
        decode_device: str = "cpu",
        frame_format: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        if decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device: expected one of {DECODE_DEVICES}, got {decode_device!r}")
        self.decode_device = decode_device
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
        self.frames_dir = self.root / FRAMES_DIR
        self.audio_dir = self.root / AUDIO_DIR
        self.frame_format = root_frame_format(self.root) if frame_format is None else check_frame_format(frame_format)
        if decode_device != "cpu" and self.frame_format != "jpg":
            raise ValueError(f"decode_device: expected 'cpu' for {self.frame_format} frames ({self.root} holds "
                             f"{self.frame_format} frames; {decode_device!r} decodes JPEG only), got {decode_device!r}")
        self.split = split
        self.annotations = annotations
        self.annotation_format = annotation_format
        self.image_size = image_size
        self.normalize = normalize
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
        check_int("epoch", epoch, 0)
        check_int("seed", seed, 0)
        self._epoch_seed = (seed, epoch)

    def generator(self, clip_id: str) -> torch.Generator | None:
        """The private generator of ``clip_id``'s augmentation this epoch (``None`` before ``set_epoch``)."""
        if self._epoch_seed is None:
            return None
        seed, epoch = self._epoch_seed
        return torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, clip_id))

    def image_path(self, clip_id: str) -> Path:
        """``<root>/frames/<id>.<frame_format>`` (:func:`marginnce_kit.layout.frame_path`)."""
        return frame_path(self.root, clip_id, self.frame_format)

    def audio_path(self, clip_id: str) -> Path:
        """``<root>/audio/<id>.wav`` (:func:`marginnce_kit.layout.audio_path`)."""
        return audio_path(self.root, clip_id)

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
        if self.decode_device == "cpu":
            # the acceptance rule shared with prepare and --verify; raises ClipRejected with its reason
            image, samples, _ = load_clip(self.image_path(clip_id), self.audio_path(clip_id), window=CLIP_SAMPLES)
            rgb = _rgb_tensor(image)
        else:  # the frame decoded by nvJPEG, in this process; the audio half of the rule as above
            rgb = decode_jpeg_frame(self.image_path(clip_id), self.decode_device)
            samples, _, problems = audio_part(self.audio_path(clip_id), window=CLIP_SAMPLES)
            if problems:
                raise ClipRejected("; ".join(problems))
        frame = resize_frame(rgb, self.split, self.image_size)
        # waveform_from_samples clips and averages sample by sample and then takes the centered
        # CLIP_SAMPLES: taking them first (same start) gives the same waveform from 3 s instead of 10
        # (load_clip already read only those from an integer-PCM WAV; other files are cropped here)
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
        crop = crop_and_flip(frame, self.split, self.image_size, generator)
        item: dict[str, Any] = {"spectrogram": spectrogram, "id": clip_id}
        if self.normalize:
            item["image"] = normalize_frames(crop)
        else:
            item["frame"] = crop
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
    """Boxes of a test split: ``"vggss"`` reads the ``vggss.json`` file ``path``; ``"flickr"`` the XML directory
    ``path``.

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
    number of good items, or ``None`` when every item failed. Items with a uint8 ``"frame"``
    (``AudioVisualDataset(normalize=False)``) give ``"image" = normalize_frames(stack(frames))``. The failures are
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
    for key in sorted(keys - {"id", "frame"}):
        batch[key] = torch.stack([it[key] for it in good])
    if "frame" in keys:
        if "image" in keys:
            raise ValueError("items carry both 'image' and 'frame'; expected one of them")
        batch["image"] = normalize_frames(torch.stack([it["frame"] for it in good]))
    return batch

