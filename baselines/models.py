"""The three baselines of the paper's Table 5 as trainable models (SPEC section 5).

Every model maps ``(image [B, 3, 224, 224], spectrogram [B, 1, 257, 200])`` to L2-normalised
features ``img [B, C, h, w]`` and ``aud [B, C]``; the loss and the localisation map come from
:mod:`marginnce_loss` (no formula is re-derived here):

- ``lvs``: ResNet-18 for both modalities, audio map global-max-pooled, no projection; loss =
  cross-entropy against column 0 of :func:`marginnce_loss.adapters.lvs.lvs_logits`
  (eq. 1 positive, all-pairs negatives with upstream's diagonal handling, trimap background
  hard negative, tau 0.07), margin on the positive.
- ``ezvsl``: visual ResNet-18 map + 1x1 conv projection, audio ResNet-18 (1-channel conv1, global
  max pool) + linear projection; loss = symmetric max-MIL marginNCE, tau 0.03.
- ``reference`` ("Ours"): the EZ-VSL architecture trained with eq. 1 + eq. 3, image anchors only,
  tau 0.07, epsilon 0.65, beta 0.03.

Backbones: ``resnet18`` (torchvision; random init unless ``pretrained=True``, which loads the
ImageNet weights for the visual encoder where they can be downloaded) or ``small``, a compact
convolutional encoder with the same output geometry (stride 32: 224 -> 7 x 7) for CPU-sized runs.

Normalisation layers (``norm``): ``"batch"`` (BatchNorm, as in the paper's ResNet-18) or
``"group"`` (GroupNorm with ``gcd(channels, 32)`` groups). GroupNorm's output of a clip does not
depend on the other clips of the batch, so a data-parallel run over ``W`` ranks computes exactly
the single-process forward of the global batch; BatchNorm normalises with per-rank batch statistics
unless it is converted to ``SyncBatchNorm`` (the trainer does that under DDP on CUDA; SyncBatchNorm
has no CPU implementation, so CPU/gloo DDP with BatchNorm uses per-rank statistics, like plain DDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginnce_loss import LocalizationMarginNCE, functional as MF
from marginnce_loss.adapters import lvs

__all__ = ["MODELS", "BACKBONES", "NORMS", "ModelConfig", "AudioVisualModel", "build_model", "norm_layer", "TAU"]

MODELS = ("lvs", "ezvsl", "reference")
BACKBONES = ("resnet18", "small")
NORMS = ("batch", "group")
# the contrastive temperature of each method (SPEC 3-4)
TAU = {"lvs": 0.07, "ezvsl": 0.03, "reference": 0.07}


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
    width: int = 64  # channel width of the ``small`` backbone's first stage
    gather_distributed: bool = False  # global-batch negatives under DDP (ezvsl, reference; LVS stays local)
    norm: str = "batch"  # "batch" | "group" (batch-independent; see the module docstring)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        for name in ("pretrained", "gather_distributed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {type(getattr(self, name)).__name__} {getattr(self, name)!r}")
        for name, low in (("dim", 1), ("width", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        for name in ("margin", "epsilon", "epsilon2", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite float, got {v!r}")
        if self.beta <= 0:
            raise ValueError(f"beta: expected a float > 0, got {self.beta!r}")
        if self.pretrained and self.backbone != "resnet18":
            raise ValueError(f"pretrained: ImageNet weights exist for backbone 'resnet18' only, got backbone {self.backbone!r}")
        if self.pretrained and self.norm != "batch":
            raise ValueError(f"pretrained: the ImageNet weights are for norm 'batch', got norm {self.norm!r}")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """``channels -> module``: ``BatchNorm2d(c)`` for ``"batch"``, ``GroupNorm(gcd(c, 32), c)`` for ``"group"``
    (32 groups where ``c`` allows, as in Wu & He 2018; one channel per group for narrow layers)."""
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(math.gcd(c, 32), c)
    raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")


def _resnet18_image(pretrained: bool, norm: str = "batch") -> Tuple[nn.Module, int]:
    from torchvision.models import ResNet18_Weights, resnet18

    net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None, norm_layer=norm_layer(norm))
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4), 512


def _resnet18_audio(norm: str = "batch") -> Tuple[nn.Module, int]:
    from torchvision.models import resnet18

    net = resnet18(weights=None, norm_layer=norm_layer(norm))
    conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4), 512


def _small(in_channels: int, width: int, norm: str = "batch") -> Tuple[nn.Module, int]:
    """A compact encoder with ResNet-18's output stride (32): a 4 x 4 patchify stem, then three
    stride-2 3 x 3 stages. ``width`` channels in the first stage, doubling to ``4 * width``;
    each conv but the last is followed by ``norm_layer(norm)`` and ReLU."""
    make_norm = norm_layer(norm)

    def block(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), make_norm(cout), nn.ReLU(inplace=True))

    w = width
    layers = nn.Sequential(
        block(in_channels, w // 2, 4, 4, 0),
        block(w // 2, w, 3, 2, 1),
        block(w, 2 * w, 3, 2, 1),
        block(2 * w, 4 * w, 3, 2, 1),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1),
    )
    return layers, 4 * w


class AudioVisualModel(nn.Module):
    """Two encoders and a marginNCE-family loss. ``forward`` returns ``(loss, maps)`` with
    ``maps = alpha_ii`` ``[B, h, w]`` (detached), like upstream EZ-VSL's ``forward``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "resnet18":
            self.imgnet, img_width = _resnet18_image(config.pretrained, config.norm)
            self.audnet, aud_width = _resnet18_audio(config.norm)
        else:
            self.imgnet, img_width = _small(3, config.width, config.norm)
            self.audnet, aud_width = _small(1, config.width, config.norm)
        if config.model == "lvs":
            self.img_proj: nn.Module = nn.Identity()
            self.aud_proj: nn.Module = nn.Identity()
        else:
            self.img_proj = nn.Conv2d(img_width, config.dim, kernel_size=1)
            self.aud_proj = nn.Linear(aud_width, config.dim)
        self._init_weights()
        self.criterion = self._make_criterion()

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
                                    sigmoid_tau=c.beta, tau=TAU["lvs"])
            return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))

        return lvs_loss

    def encode(self, image: Tensor, spectrogram: Tensor) -> Tuple[Tensor, Tensor]:
        """``img [B, C, h, w]`` and ``aud [B, C]``, both L2-normalised over ``C``."""
        img = F.normalize(self.img_proj(self.imgnet(image)), dim=1)
        aud = torch.amax(self.audnet(spectrogram), dim=(-2, -1))
        aud = F.normalize(self.aud_proj(aud), dim=1)
        return img, aud

    def forward(self, image: Tensor, spectrogram: Tensor) -> Tuple[Tensor, Tensor]:
        img, aud = self.encode(image, spectrogram)
        loss = self.criterion(img, aud)
        with torch.no_grad():
            maps = MF.response_map(img, aud)
        return loss, maps

    @torch.no_grad()
    def localize(self, image: Tensor, spectrogram: Tensor) -> Tensor:
        """Localisation maps ``alpha_ii`` ``[B, h, w]`` (inference; no loss)."""
        img, aud = self.encode(image, spectrogram)
        return MF.response_map(img, aud)


def build_model(config: ModelConfig) -> AudioVisualModel:
    return AudioVisualModel(config)


def describe(config: ModelConfig) -> Dict[str, object]:
    return {"model": config.model, "margin": config.margin, "backbone": config.backbone, "norm": config.norm,
            "tau": TAU[config.model]}
