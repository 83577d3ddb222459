"""Model construction (marginnce_kit.models): shapes, normalisation, losses through marginnce_loss, every
parameter trained, the GroupNorm option's batch independence, configuration errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

from marginnce_kit.models import MODELS, ModelConfig, build_model  # noqa: E402
from marginnce_loss import functional as MF  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 224, 224, generator=g), torch.randn(b, 1, 257, 200, generator=g)


def _channels(config: ModelConfig) -> int:
    if config.model != "lvs":
        return config.dim
    return 512 if config.backbone == "resnet18" else 4 * config.width


@pytest.mark.parametrize("backbone", ["small", "patch8"])
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("model", MODELS)
def test_compact_backbone_shapes_loss_and_gradients(model: str, norm: str, backbone: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(model=model, backbone=backbone, width=8, dim=32, norm=norm)
    net = build_model(config)
    image, spec = _inputs(3)
    img, aud = net.encode(image, spec)
    c = _channels(config)
    assert img.shape == (3, c, 7, 7) and aud.shape == (3, c)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3, 7, 7))
    torch.testing.assert_close(aud.norm(dim=1), torch.ones(3))
    loss, maps = net(image, spec)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert maps.shape == (3, 7, 7) and not maps.requires_grad
    torch.testing.assert_close(maps, MF.response_map(img, aud).detach())
    torch.testing.assert_close(net.localize(image, spec), maps)
    loss.backward()
    # every parameter takes part (DistributedDataParallel needs no find_unused_parameters)
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())
    norms = {type(m) for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))}
    assert norms == {nn.BatchNorm2d if norm == "batch" else nn.GroupNorm}


@pytest.mark.parametrize("backbone", ["small", "patch8"])
def test_compact_backbones_run_channels_last_with_the_numbers_of_contiguous(backbone: str) -> None:
    """The compact encoders keep their conv weights channels-last (oneDNN's CPU layout); the features
    equal those of the same weights in the default layout up to float rounding, and a checkpoint's
    state dict loads into either."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(model="reference", backbone=backbone, width=8, dim=32)).eval()
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    plain = build_model(ModelConfig(model="reference", backbone=backbone, width=8, dim=32)).eval()
    plain.load_state_dict(net.state_dict())
    plain.to(memory_format=torch.contiguous_format)
    plain._memory_format = torch.contiguous_format
    assert not all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in plain.modules() if isinstance(m, nn.Conv2d))
    image, spec = _inputs(3)
    with torch.no_grad():
        for got, want in zip(net.encode(image, spec), plain.encode(image, spec)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    resnet = build_model(ModelConfig(model="reference", backbone="resnet18", dim=32))
    assert resnet._memory_format == torch.contiguous_format  # ResNet-18 keeps torchvision's layout


@pytest.mark.parametrize("backbone", ["small", "patch8"])
def test_compact_backbones_at_112_pixels_keep_7_by_7_maps(backbone: str) -> None:
    """image_size=112 halves the image stride of a compact encoder (the maps stay 7 x 7); the audio
    encoder and every other layer are those of the 224-pixel model (same parameter shapes but the stem)."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(model="reference", backbone=backbone, width=8, dim=32, image_size=112))
    g = torch.Generator().manual_seed(0)
    image, spec = torch.randn(2, 3, 112, 112, generator=g), torch.randn(2, 1, 257, 200, generator=g)
    img, aud = net.encode(image, spec)
    assert img.shape == (2, 32, 7, 7) and aud.shape == (2, 32)
    full = build_model(ModelConfig(model="reference", backbone=backbone, width=8, dim=32))
    stem = net.imgnet[0][0]
    assert stem.stride[0] * 2 == full.imgnet[0][0].stride[0] and stem.kernel_size == stem.stride
    shapes = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("imgnet.0.0")}
    assert shapes == {k: v.shape for k, v in full.state_dict().items() if not k.startswith("imgnet.0.0")}


def test_resnet18_group_norm_replaces_every_batchnorm() -> None:
    net = build_model(ModelConfig(model="lvs", backbone="resnet18", norm="group"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    groups = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == 2 * 20 and all(m.num_groups == 32 for m in groups)  # ResNet-18 has 20 norm layers


@pytest.mark.parametrize("model", ["ezvsl", "reference"])
def test_group_norm_features_do_not_depend_on_the_batch(model: str) -> None:
    """The property the CPU DDP equivalence rests on: a clip's features are the same whatever else
    is in its batch (train mode), with GroupNorm; BatchNorm's are not."""
    image, spec = _inputs(4)
    for norm in ("group", "batch"):
        torch.manual_seed(0)
        net = build_model(ModelConfig(model=model, backbone="small", width=8, dim=32, norm=norm)).train()
        whole = net.encode(image, spec)
        halves = [net.encode(image[s], spec[s]) for s in (slice(0, 2), slice(2, 4))]
        joined = [torch.cat([h[k] for h in halves]) for k in range(2)]
        same = all(torch.allclose(w, j, rtol=1e-5, atol=1e-6) for w, j in zip(whole, joined))
        assert same == (norm == "group")


def test_margin_reaches_the_loss() -> None:
    image, spec = _inputs(3)
    losses = {}
    for margin in (0.0, -0.2):
        torch.manual_seed(0)
        net = build_model(ModelConfig(model="reference", backbone="small", width=8, dim=32, margin=margin)).eval()
        img, aud = net.encode(image, spec)
        losses[margin] = net.criterion(img, aud)
        sim = MF.thresholded_similarity(img, aud, 0.65, 0.03)
        torch.testing.assert_close(losses[margin], MF.margin_nce(sim, margin, 0.07))
    assert losses[-0.2] < losses[0.0]  # a negative margin lowers the loss on the same features


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(model="clip"), ValueError, r"model: expected one of \('lvs', 'ezvsl', 'reference'\), got 'clip'"),
    (dict(backbone="resnet50"), ValueError, r"backbone: expected one of \('resnet18', 'small', 'patch8'\), got 'resnet50'"),
    (dict(norm="instance"), ValueError, r"norm: expected one of \('batch', 'group'\), got 'instance'"),
    (dict(backbone="small", pretrained=True), ValueError, r"pretrained: ImageNet weights exist for backbone 'resnet18' only"),
    (dict(pretrained=True, norm="group"), ValueError, r"pretrained: the ImageNet weights are for norm 'batch'"),
    (dict(width=1), ValueError, r"width: expected an int >= 2, got 1"),
    (dict(dim=0), ValueError, r"dim: expected an int >= 1, got 0"),
    (dict(dim=32.0), TypeError, r"dim: expected an int, got float 32.0"),
    (dict(image_size=160, backbone="small"), ValueError, r"image_size: expected one of \(224, 112\), got 160"),
    (dict(image_size=112), ValueError, r"image_size: expected 224 with backbone 'resnet18' \(112 needs a compact "
                                       r"backbone: small or patch8\), got 112; pass --image-size 224 with --backbone"),
    (dict(image_size=224.0), TypeError, r"image_size: expected an int, got float 224.0"),
    (dict(margin=float("nan")), ValueError, r"margin: expected a finite float, got nan"),
    (dict(beta=0.0), ValueError, r"beta: expected a finite float > 0, got 0.0"),
    (dict(gather_distributed=1), TypeError, r"gather_distributed: expected a bool, got int 1"),
    (dict(visual_weights="w.pth"), ValueError, r"visual_weights: a file of ImageNet weights for pretrained=True"),
    (dict(pretrained=True, visual_weights=3), TypeError, r"visual_weights: expected a str, got int 3"),
])
def test_model_config_errors(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        ModelConfig(**kwargs)


def test_group_norm_group_count() -> None:
    net = build_model(ModelConfig(model="ezvsl", backbone="small", width=8, dim=32, norm="group"))
    counts = [(m.num_channels, m.num_groups) for m in net.imgnet.modules() if isinstance(m, nn.GroupNorm)]
    assert counts == [(4, 4), (8, 8), (16, 16), (32, 32)]  # gcd(channels, 32)


def test_local_imagenet_weights_and_their_errors(tmp_path, monkeypatch) -> None:
    """``visual_weights`` / torchvision's cache file feed the visual ResNet-18 without a network; every
    unusable file is a WeightsUnavailableError naming it (never code run from a pickle)."""
    from torchvision.models import resnet18

    from marginnce_kit.models import WeightsUnavailableError, imagenet_resnet18_state, torchvision_cache_path

    def no_download(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    torch.manual_seed(3)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    net = build_model(ModelConfig(model="ezvsl", dim=16, pretrained=True, visual_weights=str(path)))
    assert torch.equal(net.imgnet[0].weight, state["conv1.weight"])
    assert torch.equal(net.imgnet[1].running_var, state["bn1.running_var"])
    # load_pretrained=False (a checkpoint follows) reads no file at all
    build_model(ModelConfig(model="ezvsl", dim=16, pretrained=True, visual_weights=str(tmp_path / "gone.pth")),
                load_pretrained=False)
    # torchvision's cache file, when present, serves pretrained=True without a path
    cached = torchvision_cache_path()
    with pytest.raises(WeightsUnavailableError, match=rf"no ImageNet ResNet-18 weights at {cached}.*OSError: offline"):
        imagenet_resnet18_state()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(path.read_bytes())
    assert torch.equal(imagenet_resnet18_state()["fc.weight"], state["fc.weight"])
    with pytest.raises(WeightsUnavailableError, match="visual weights: no such file"):
        imagenet_resnet18_state(str(tmp_path / "missing.pth"))
    code = tmp_path / "code.pth"
    torch.save({"conv1.weight": torch.zeros(1), "why": tmp_path}, code)  # a Path needs unpickling code
    with pytest.raises(WeightsUnavailableError, match="visual weights .*holds objects other than tensors"):
        imagenet_resnet18_state(str(code))
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsUnavailableError, match="not a torchvision ResNet-18 state dict"):
        build_model(ModelConfig(model="lvs", pretrained=True, visual_weights=str(other)))
