"""The image pipeline of upstream EZ-VSL (``datasets.py``, stoneMo/EZ-VSL@95ff5bf): the deterministic
resize (cacheable) and the random crop / flip plus ImageNet normalisation, and frame decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._checks import check_int
from .acceptance import ClipRejected, decode_frame, frame_problems

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]


_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]


def image_transform(split: str, image_size: int = 224):
    """The image pipeline (upstream EZ-VSL ``datasets.py@95ff5bf``) as one callable
    ``PIL.Image -> [3, size, size]`` float32.

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
        check_int(name, v, 1)
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
    ImageNet normalisation. ``frame`` is a uint8 ``[3, h, w]`` from :func:`resize_frame`; returns float32
    ``[3, size, size]``: ``normalize_frames(crop_and_flip(frame, split, image_size, generator))``.

    The three draws (top, left, flip) come from ``generator`` (a CPU ``torch.Generator``), or from
    torch's global RNG when it is ``None``. The test split draws nothing."""
    return normalize_frames(crop_and_flip(frame, split, image_size, generator))


def crop_and_flip(
    frame: torch.Tensor, split: str, image_size: int = 224, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The draws of :func:`augment_frame` without the normalisation: the uint8 ``[3, size, size]`` crop
    (train; flipped with probability 1/2) or ``frame`` itself (test). A view when not flipped.

    Raises:
        ValueError: ``split`` is not ``"train"`` / ``"test"``; a train frame smaller than the crop.
        TypeError: ``generator`` is not a ``torch.Generator`` or ``None``.
    """
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
    return frame


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` with the ImageNet mean and std, as ``ToTensor`` + ``Normalize`` compute it.

    Args:
        frames: uint8 ``[3, H, W]`` or ``[B, 3, H, W]``.

    Returns:
        float32 of the same shape (a new tensor). The float32 ops are the same element by element
        whatever the batch size, so normalising a stacked batch gives the bits of normalising each
        frame (``collate_batch`` normalises a batch at once: one conversion instead of ``B``).

    Raises:
        ValueError: ``frames`` is not uint8 with 3 channels in dimension -3.
    """
    if frames.dtype != torch.uint8 or frames.dim() not in (3, 4) or frames.shape[-3] != 3:
        raise ValueError(f"frames: expected uint8 [3, H, W] or [B, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    # in place on the float copy (the same float32 ops, one allocation)
    return frames.to(torch.float32).div_(255.0).sub_(_MEAN.to(frames.device)).div_(_STD.to(frames.device))


#: Where :func:`decode_jpeg_frame` can decode (``AudioVisualDataset(decode_device=...)``, ``--decode-device``).
DECODE_DEVICES = ("cpu", "cuda")


def decode_jpeg_frame(path: str | Path, device: str = "cpu") -> torch.Tensor:
    """A JPEG frame decoded by ``torchvision.io.decode_jpeg`` on ``device`` (libjpeg-turbo on the CPU, nvJPEG on
    CUDA) as uint8 ``[3, H, W]`` RGB on that device: the frame path of ``--decode-device cuda``. On the CPU it gives
    the bits of :func:`load_frame` (the same libjpeg-turbo; ``tests/test_gpu_switches.py`` checks it); nvJPEG's
    IDCT may differ from it by a grey level.

    Raises:
        ValueError: ``device`` is not one of :data:`DECODE_DEVICES`.
        ClipRejected: ``frame does not decode as a JPEG on <device>: ...`` (missing, truncated, not a JPEG: the
            Pillow path of ``--decode-device cpu`` reads any format Pillow reads); counted like any broken clip.
    """
    if device not in DECODE_DEVICES:
        raise ValueError(f"device: expected one of {DECODE_DEVICES}, got {device!r}")
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    try:
        frame = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB, device=device)
    except Exception as error:  # torchvision raises RuntimeError (and OSError for a missing file)
        raise ClipRejected(f"frame does not decode as a JPEG on {device}: {type(error).__name__}: {error}") from error
    if frame.dim() != 3 or frame.shape[0] != 3 or frame.shape[1] < 1 or frame.shape[2] < 1:
        raise ClipRejected(f"frame: expected an RGB image, decoded {tuple(frame.shape)}")
    return frame


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
