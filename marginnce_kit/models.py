"""The three baselines of the paper's Table 5 as trainable models (the paper: Sec. 2, eqs. 1-3; Sec. 3.2).

Every model maps ``(image [B, 3, S, S], spectrogram [B, 1, 257, 200])`` (``S = image_size``, 224
under the paper's protocol) to L2-normalised features ``img [B, C, 7, 7]`` and ``aud [B, C]``; the
loss and the localisation map come from :mod:`marginnce_loss` (no formula is re-derived here):

- ``lvs``: ResNet-18 for both modalities, audio map global-max-pooled, no projection; loss =
  cross-entropy against column 0 of :func:`marginnce_loss.adapters.lvs.lvs_logits`
  (eq. 1 positive, all-pairs negatives with upstream's diagonal handling, trimap background
  hard negative, tau 0.07), margin on the positive.
- ``ezvsl``: visual ResNet-18 map + 1x1 conv projection, audio ResNet-18 (1-channel conv1, global
  max pool) + linear projection; loss = symmetric max-MIL marginNCE, tau 0.03.
- ``reference`` ("Ours"): the EZ-VSL architecture trained with eq. 1 + eq. 3, image anchors only,
  tau 0.07, epsilon 0.65, beta 0.03.

Backbones: ``resnet18`` (torchvision; random init unless ``pretrained=True``, which loads the
ImageNet weights into the visual encoder, see :func:`imagenet_resnet18_state`), or one of two
compact convolutional encoders with the same output geometry (stride 32: 224 -> 7 x 7) for CPU-sized
runs: ``small`` (a 4 x 4 patchify stem, then three stride-2 stages) and ``patch8`` (an 8 x 8 patchify
stem, then two stride-2 stages: one stage fewer at the highest resolution). The compact encoders keep
their weights and activations channels-last, the layout oneDNN's CPU convolutions run in without
reordering (the same numbers up to float rounding; ``python -m benchmarks.study_runs`` times study
runs both ways). With ``image_size=112`` a compact encoder's image
stem halves its stride (16 instead of 32), so the maps stay 7 x 7; the evaluation upsamples them to
the protocol's 224 x 224 either way (:func:`marginnce_kit.evaluation.upsample_map`).

ImageNet weights without a network: ``visual_weights`` (``--visual-weights PATH``) names a file
holding torchvision's ResNet-18 state dict (``torch.save(resnet18(...).state_dict(), PATH)``, e.g. a
copy of torchvision's ``resnet18-f37072fd.pth``); without it the weights come from torchvision's cache
file ``<torch.hub.get_dir()>/checkpoints/resnet18-f37072fd.pth`` (``$TORCH_HOME/hub/...``, by default
``~/.cache/torch/hub/...``), downloaded there when absent. Offline and absent, the error says where to
put the file. Weight files are read with ``torch.load(..., weights_only=True)``: a file cannot run code.

Normalisation layers (``norm``): ``"batch"`` (BatchNorm, as in the paper's ResNet-18) or
``"group"`` (GroupNorm with ``gcd(channels, 32)`` groups). GroupNorm's output of a clip does not
depend on the other clips of the batch, so a data-parallel run over ``W`` ranks computes exactly
the single-process forward of the global batch; BatchNorm normalises with per-rank batch statistics
unless it is converted to ``SyncBatchNorm`` (the trainer does that under DDP on CUDA; SyncBatchNorm
has no CPU implementation, so CPU/gloo DDP with BatchNorm uses per-rank statistics, like plain DDP).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginnce_loss import LocalizationMarginNCE
from marginnce_loss import functional as MF
from marginnce_loss.adapters import lvs

from ._checks import check_bool, check_choice, check_finite, check_int, check_positive, check_str
from .cli import UsageError
from .io import TorchFileError, load_weights_only

__all__ = ["MODELS", "BACKBONES", "NORMS", "ModelConfig", "AudioVisualModel", "build_model", "norm_layer", "TAU",
           "WEIGHT_DECAY",
           "WeightsUnavailableError", "imagenet_resnet18", "imagenet_resnet18_state", "torchvision_cache_path"]

MODELS = ("lvs", "ezvsl", "reference")
#: network input sides: 224 (the protocol; every backbone) and 112 (the compact backbones, at output stride 16)
IMAGE_SIZES = (224, 112)
BACKBONES = ("resnet18", "small", "patch8")
NORMS = ("batch", "group")
# the contrastive temperature of each method (LVS: Chen et al. 2021; EZ-VSL: Mo & Morgado 2022; ours: Sec. 2)
TAU = {"lvs": 0.07, "ezvsl": 0.03, "reference": 0.07}
#: Adam weight decay of each method as its upstream trains it: EZ-VSL builds ``Adam(params, lr)`` without weight
#: decay (stoneMo/EZ-VSL@95ff5bf ``utils.py``, ``build_optimizer_and_scheduler_adam``); the paper trains its model
#: with "adam optimizer with the weight decay" (Sec. 3, no value given) and LVS's repository has no training code,
#: so both keep 1e-4 (FNAC_AVL@0a0ca78 ``train.py``'s default, the family's usual value).
WEIGHT_DECAY = {"lvs": 1e-4, "ezvsl": 0.0, "reference": 1e-4}


@dataclass(frozen=True)
class ModelConfig:
    """What defines a model. ``dim`` is the projection width (EZ-VSL / reference);
    LVS has no projection and uses the backbone's width."""

    model: str = "reference"
    margin: float = -0.2
    backbone: str = "resnet18"
    dim: int = 512
    pretrained: bool = False
    epsilon: float = 0.65
    epsilon2: float = 0.4
    beta: float = 0.03
    width: int = 64  # channel width of the ``small`` / ``patch8`` backbone's first stage
    gather_distributed: bool = False  # global-batch negatives under DDP (ezvsl, reference; LVS stays local)
    norm: str = "batch"  # "batch" | "group" (batch-independent; see the module docstring)
    visual_weights: str = ""  # pretrained: a local ImageNet ResNet-18 state dict ("" = torchvision's cache)
    image_size: int = 224  # the image input's side (IMAGE_SIZES); 112: compact backbones only

    def __post_init__(self) -> None:
        """The model's settings are checked here, once (``TrainConfig`` delegates its model fields here).

        Raises:
            TypeError: a field of the wrong type (bool, int, float, str fields).
            ValueError: an unknown model / backbone / norm, an out-of-range value, ``pretrained`` with
                a backbone or norm the ImageNet weights do not fit, ``visual_weights`` without it.
        """
        check_choice("model", self.model, MODELS)
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("norm", self.norm, NORMS)
        check_bool("pretrained", self.pretrained)
        check_bool("gather_distributed", self.gather_distributed)
        check_int("dim", self.dim, 1)
        check_int("width", self.width, 2)
        for name in ("margin", "epsilon", "epsilon2"):
            check_finite(name, getattr(self, name))
        check_positive("beta", self.beta)
        check_str("visual_weights", self.visual_weights)
        check_int("image_size", self.image_size)
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size: expected one of {IMAGE_SIZES}, got {self.image_size}")
        if self.image_size != 224 and self.backbone not in _COMPACT:
            raise ValueError(f"image_size: expected 224 with backbone {self.backbone!r} (112 needs a compact backbone: "
                             f"{' or '.join(_COMPACT)}), got {self.image_size}; pass --image-size 224 with "
                             f"--backbone {self.backbone}")
        if self.pretrained and self.backbone != "resnet18":
            raise ValueError("pretrained: ImageNet weights exist for backbone 'resnet18' only, "
                             f"got backbone {self.backbone!r}")
        if self.pretrained and self.norm != "batch":
            raise ValueError(f"pretrained: the ImageNet weights are for norm 'batch', got norm {self.norm!r}")
        if self.visual_weights and not self.pretrained:
            raise ValueError(f"visual_weights: a file of ImageNet weights for pretrained=True (--pretrained), "
                             f"got {self.visual_weights!r} with pretrained=False")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """``channels -> module``: ``BatchNorm2d(c)`` for ``"batch"``, ``GroupNorm(gcd(c, 32), c)`` for ``"group"``
    (32 groups where ``c`` allows, as in Wu & He 2018; one channel per group for narrow layers)."""
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(math.gcd(c, 32), c)
    raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")


class WeightsUnavailableError(UsageError, FileNotFoundError):
    """ImageNet ResNet-18 weights that cannot be had: the named file is missing or unreadable, or the
    download into torchvision's cache failed (offline). The message says where to put the file."""


def torchvision_cache_path() -> Path:
    """Where torchvision keeps (and looks for) the ImageNet ResNet-18 weights:
    ``<torch.hub.get_dir()>/checkpoints/resnet18-f37072fd.pth`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    from torchvision.models import ResNet18_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)


def _read_state(path: Path, fix: str) -> dict[str, Tensor]:
    try:
        state = load_weights_only(path, "visual weights")
    except TorchFileError as e:
        raise WeightsUnavailableError(e.problem, fix) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path}: expected a state dict {{name: tensor}}, got {type(state).__name__}",
                                      fix)
    return state


def imagenet_resnet18_state(path: str = "") -> dict[str, Tensor]:
    """The ImageNet ResNet-18 state dict (torchvision's ``IMAGENET1K_V1`` layout).

    Args:
        path: a local file holding the state dict; ``""``: torchvision's cache file
            (:func:`torchvision_cache_path`), downloaded from torchvision's URL (hash-checked) when absent.

    Raises:
        WeightsUnavailableError: ``path`` missing or unreadable; or no cache file and the download failed
            (the message names the cache path to put the weights at, and ``--visual-weights``).
    """
    from torchvision.models import ResNet18_Weights

    if path:
        fix = "pass --visual-weights a torchvision ResNet-18 state dict (torch.save(model.state_dict(), PATH))"
        p = Path(path)
        if not p.is_file():
            raise WeightsUnavailableError(f"visual weights: no such file {str(p)!r}", fix)
        return _read_state(p, fix)
    cached = torchvision_cache_path()
    fix = (f"put torchvision's ImageNet ResNet-18 weights ({cached.name}, from "
           f"{ResNet18_Weights.IMAGENET1K_V1.url}) at {cached}, or pass --visual-weights PATH")
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            match = torch.hub.HASH_REGEX.search(cached.name)
            torch.hub.download_url_to_file(ResNet18_Weights.IMAGENET1K_V1.url, str(cached),
                                           hash_prefix=match.group(1) if match else None, progress=False)
        except Exception as e:  # offline (URLError), HTTP error, timeout, hash mismatch, read-only cache
            raise WeightsUnavailableError(f"pretrained: no ImageNet ResNet-18 weights at {cached} and the download "
                                          f"failed ({type(e).__name__}: {e})", fix) from e
    return _read_state(cached, fix)


def imagenet_resnet18(path: str = "", norm: str = "batch") -> nn.Module:
    """torchvision's ``resnet18`` with the ImageNet weights of :func:`imagenet_resnet18_state`
    (a strict load; a file of another layout raises :class:`WeightsUnavailableError` naming it)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None, norm_layer=norm_layer(norm))
    state = imagenet_resnet18_state(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        where = path or str(torchvision_cache_path())
        raise WeightsUnavailableError(f"{where}: not a torchvision ResNet-18 state dict ({str(e).splitlines()[0]})",
                                      "pass the weights of torchvision.models.resnet18") from e
    return net


def _resnet18_image(pretrained: bool, norm: str = "batch", weights: str = "") -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    net: Any = imagenet_resnet18(weights, norm) if pretrained else resnet18(weights=None, norm_layer=norm_layer(norm))
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4), 512


def _resnet18_audio(norm: str = "batch") -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    net = resnet18(weights=None, norm_layer=norm_layer(norm))
    conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4), 512


def _conv_block(cin: int, cout: int, k: int, s: int, p: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), norm_layer(norm)(cout), nn.ReLU(inplace=True))


def _small(in_channels: int, width: int, norm: str = "batch", stem: int = 4) -> tuple[nn.Module, int]:
    """A compact encoder with ResNet-18's output stride (32 with the default ``stem``): a ``stem`` x
    ``stem`` patchify stem, then three stride-2 3 x 3 stages. ``width`` channels in the first stage,
    doubling to ``4 * width``; each conv but the last is followed by ``norm_layer(norm)`` and ReLU."""
    w = width
    layers = nn.Sequential(
        _conv_block(in_channels, w // 2, stem, stem, 0, norm),
        _conv_block(w // 2, w, 3, 2, 1, norm),
        _conv_block(w, 2 * w, 3, 2, 1, norm),
        _conv_block(2 * w, 4 * w, 3, 2, 1, norm),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1),
    )
    return layers, 4 * w


def _patch8(in_channels: int, width: int, norm: str = "batch", stem: int = 8) -> tuple[nn.Module, int]:
    """``_small`` without its highest-resolution stage: an 8 x 8 (``stem``) patchify stem to ``width``
    channels, then two stride-2 3 x 3 stages (``2 * width``, ``4 * width``) and the last 3 x 3 conv;
    output stride 32 with the default ``stem``."""
    w = width
    layers = nn.Sequential(
        _conv_block(in_channels, w, stem, stem, 0, norm),
        _conv_block(w, 2 * w, 3, 2, 1, norm),
        _conv_block(2 * w, 4 * w, 3, 2, 1, norm),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1),
    )
    return layers, 4 * w


_COMPACT = {"small": _small, "patch8": _patch8}
_COMPACT_STEM = {"small": 4, "patch8": 8}  # at image_size 224; the audio stem keeps it whatever the image size


class AudioVisualModel(nn.Module):
    """Two encoders and a marginNCE-family loss. ``forward`` returns ``(loss, maps)`` with
    ``maps = alpha_ii`` ``[B, h, w]`` (detached), like upstream EZ-VSL's ``forward``.

    ``load_pretrained=False`` skips reading the ImageNet weights of ``config.pretrained`` (for a
    caller that loads a full state dict next: a checkpoint, a resumed run); the initialisation is then
    the one a ``pretrained`` model gets around its visual encoder."""

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "resnet18":
            self.imgnet, img_width = _resnet18_image(config.pretrained and load_pretrained, config.norm,
                                                     config.visual_weights)
            self.audnet, aud_width = _resnet18_audio(config.norm)
        else:
            stem = _COMPACT_STEM[config.backbone] * config.image_size // 224  # 7 x 7 maps at either image size
            self.imgnet, img_width = _COMPACT[config.backbone](3, config.width, config.norm, stem)
            self.audnet, aud_width = _COMPACT[config.backbone](1, config.width, config.norm)
        if config.model == "lvs":
            self.img_proj: nn.Module = nn.Identity()
            self.aud_proj: nn.Module = nn.Identity()
        else:
            self.img_proj = nn.Conv2d(img_width, config.dim, kernel_size=1)
            self.aud_proj = nn.Linear(aud_width, config.dim)
        self._init_weights()
        self.criterion = self._make_criterion()
        # the compact CPU encoders run channels-last (oneDNN's convolutions then skip their reorders)
        self._memory_format = torch.channels_last if config.backbone in _COMPACT else torch.contiguous_format
        self.to(memory_format=self._memory_format)

    def _init_weights(self) -> None:
        skip = self.imgnet if self.config.pretrained else None
        for module in self.modules():
            if skip is not None and any(module is m for m in skip.modules()):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.01)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
                nn.init.normal_(module.weight, mean=1, std=0.02)
                nn.init.constant_(module.bias, 0)

    def _make_criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        c = self.config
        if c.model == "ezvsl":
            return LocalizationMarginNCE("max", margin=c.margin, tau=TAU["ezvsl"], symmetric=True,
                                         gather_distributed=c.gather_distributed)
        if c.model == "reference":
            return LocalizationMarginNCE("thresholded", margin=c.margin, tau=TAU["reference"], epsilon=c.epsilon,
                                         beta=c.beta, gather_distributed=c.gather_distributed)

        def lvs_loss(img: Tensor, aud: Tensor) -> Tensor:
            logits = lvs.lvs_logits(img, aud, margin=c.margin, epsilon=c.epsilon, epsilon2=c.epsilon2,
                                    beta=c.beta, tau=TAU["lvs"])
            return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))

        return lvs_loss

    def encode(self, image: Tensor, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        """``img [B, C, h, w]`` and ``aud [B, C]``, both L2-normalised over ``C``."""
        image = image.contiguous(memory_format=self._memory_format)
        spectrogram = spectrogram.contiguous(memory_format=self._memory_format)
        img = F.normalize(self.img_proj(self.imgnet(image)), dim=1)
        aud = torch.amax(self.audnet(spectrogram), dim=(-2, -1))
        aud = F.normalize(self.aud_proj(aud), dim=1)
        return img, aud

    def forward(self, image: Tensor, spectrogram: Tensor,
                return_features: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """``(loss, maps)``; with ``return_features`` also the detached features ``(img, aud)`` the loss was
        computed from (the trainer's mechanism diagnostics)."""
        img, aud = self.encode(image, spectrogram)
        loss = self.criterion(img, aud)
        with torch.no_grad():
            maps = MF.response_map(img, aud)
        if return_features:
            return loss, maps, (img.detach(), aud.detach())
        return loss, maps

    @torch.no_grad()
    def localize(self, image: Tensor, spectrogram: Tensor) -> Tensor:
        """Localisation maps ``alpha_ii`` ``[B, h, w]`` (inference; no loss)."""
        img, aud = self.encode(image, spectrogram)
        return MF.response_map(img, aud)


def build_model(config: ModelConfig, load_pretrained: bool = True) -> AudioVisualModel:
    """``AudioVisualModel(config, load_pretrained)``. Raises :class:`WeightsUnavailableError` when
    ``config.pretrained`` and the ImageNet weights cannot be had (see :func:`imagenet_resnet18_state`)."""
    return AudioVisualModel(config, load_pretrained)

