"""The loss's share of one training step of the reference architecture (see :mod:`benchmarks.run`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..timing import fwd_bwd, interleaved
from .cases import loss_functions

__all__ = ["ReferenceModel", "bench_train_step"]


class ReferenceModel(nn.Module):
    """EZ-VSL's architecture as the reference model uses it: ResNet-18 image encoder (the 7 x 7
    feature map, 1 x 1 projection) and ResNet-18 audio encoder with a 1-channel stem (global max
    pool, linear projection); both outputs L2-normalised over channels."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        import torchvision

        image = torchvision.models.resnet18(weights=None)
        audio = torchvision.models.resnet18(weights=None)
        audio.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.image = nn.Sequential(*list(image.children())[:-2])
        self.audio = nn.Sequential(*list(audio.children())[:-2], nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.image_proj = nn.Conv2d(512, dim, kernel_size=1)
        self.audio_proj = nn.Linear(512, dim)

    def forward(self, frames: Tensor, spec: Tensor):
        img = F.normalize(self.image_proj(self.image(frames)), dim=1)
        aud = F.normalize(self.audio_proj(self.audio(spec)), dim=1)
        return img, aud


def bench_train_step(
    batch: int,
    image: int,
    spec: Sequence[int],
    backends: Sequence[str],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None],
) -> list[dict]:
    try:
        model = ReferenceModel().to(device)
    except ImportError as error:  # torchvision is the "kit" extra
        log(f"training step skipped: {error}")
        return []
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, 3, image, image, generator=g).to(device)
    spectrogram = torch.randn(batch, 1, spec[0], spec[1], generator=g).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    variants = {k: v for k, v in loss_functions(backends)["eq1"].items() if k != "eager-rows"}

    def train_step(loss_fn):
        def step():
            optimizer.zero_grad(set_to_none=True)
            img, aud = model(frames, spectrogram)
            loss = loss_fn(img, aud)
            loss.backward()
            optimizer.step()

        return step

    with torch.no_grad():
        img0, aud0 = model(frames, spectrogram)
    img0, aud0 = img0.detach().requires_grad_(), aud0.detach().requires_grad_()
    fns: dict[str, Callable[[], object]] = {}
    for name, loss_fn in variants.items():
        fns[f"step/{name}"] = train_step(loss_fn)
        fns[f"loss/{name}"] = fwd_bwd(loss_fn, img0, aud0)
    for fn in fns.values():  # warm up, compile
        fn()
    times = interleaved(fns, repeats, device)
    rows = []
    for name in variants:
        step_ms = 1e3 * statistics.median(times[f"step/{name}"])
        loss_ms = 1e3 * statistics.median(times[f"loss/{name}"])
        rows.append(
            {
                "variant": name,
                "batch": batch,
                "feature_map": list(img0.shape[1:]),
                "step_ms": step_ms,
                "loss_ms": loss_ms,
                "loss_share": loss_ms / step_ms,
                "repeats": repeats,
            }
        )
        log(f"training step, {name}: step {step_ms:.0f} ms, loss {loss_ms:.2f} ms ({100 * loss_ms / step_ms:.2f}%)")
    return rows
