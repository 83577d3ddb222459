"""The test oracles: the one set of references the tests compare against, written straight from the
formulas, deliberately on a different code path from the package: broadcasting products instead of
matmuls, explicit loops over anchors, and upstream's own operation order for the adapters.

- response maps, eq. 1, max-MIL, LVS background, eq. 3: the paper (sections 2.1-2.2) and the
  upstream loss sites, float64;
- the upstream loss sites with a margin, float32-capable, logits first as upstream computes them:
  EZ-VSL ``model.py`` ``EZVSL.max_xmil_loss`` (stoneMo/EZ-VSL @ 95ff5bf), LVS ``model.py``
  ``AVENet.forward`` (hche11/Localizing-Visual-Sounds-the-Hard-Way @ 8fe8cbb), and cross-entropy
  on logits with the margin on the positives (SLAVC ``model.py``, stoneMo/SLAVC @ 05b429c).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalized_features(b: int, c: int, h: int, w: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, c, h, w, generator=g, dtype=dtype), dim=1)
    aud = F.normalize(torch.randn(b, c, generator=g, dtype=dtype), dim=1)
    return img, aud


def trained_like_features(b: int, c: int, h: int, w: int, seed: int = 0, dtype=torch.float32):
    """Features of a model that has learnt something: each clip's audio matches a peaked blob of
    its own image (cosine up to ~0.9 there), other clips' audio matches weakly."""
    g = torch.Generator().manual_seed(seed)
    aud = F.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cy = torch.rand(b, generator=g, dtype=torch.float64) * (h - 1)
    cx = torch.rand(b, generator=g, dtype=torch.float64) * (w - 1)
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * (0.2 * max(h, w)) ** 2))
    img = 0.35 * noise / math.sqrt(c) + 3.0 * blob[:, None] * aud[:, :, None, None]
    img = F.normalize(img, dim=1)
    return img.to(dtype), aud.to(dtype)


def alpha_ref(img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
    """alpha[i, j, h, w] = <img[i, :, h, w], aud[j]> by broadcasting."""
    return (img[:, None, :, :, :] * aud[None, :, :, None, None]).sum(dim=2)


def thresholded_ref(img, aud, epsilon=0.65, beta=0.03):
    a = alpha_ref(img, aud)
    wgt = 1.0 / (1.0 + torch.exp(-(a - epsilon) / beta))
    return (wgt * a).sum(dim=(-1, -2)) / wgt.sum(dim=(-1, -2))


def max_ref(img, aud):
    a = alpha_ref(img, aud)
    return a.reshape(a.shape[0], a.shape[1], -1).max(dim=-1).values


def background_ref(img, aud, epsilon=0.4, beta=0.03):
    a = (img * aud[:, :, None, None]).sum(dim=1)
    n = 1.0 / (1.0 + torch.exp((a - epsilon) / beta))  # 1 - sigmoid(z) = sigmoid(-z), without cancellation
    return (n * a).sum(dim=(-1, -2)) / n.sum(dim=(-1, -2))


def margin_nce_ref(sim, margin, tau, symmetric=False, extra=None):
    """Eq. 3 anchor by anchor."""
    b = sim.shape[0]
    losses = []
    for i in range(b):
        pos = math.exp((sim[i, i].item() - margin) / tau)
        den = pos + sum(math.exp(sim[i, j].item() / tau) for j in range(b) if j != i)
        if extra is not None:
            den += sum(math.exp(v / tau) for v in extra[i].tolist())
        li = -math.log(pos / den)
        if symmetric:
            den_c = pos + sum(math.exp(sim[j, i].item() / tau) for j in range(b) if j != i)
            li += -math.log(pos / den_c)
        losses.append(li)
    return torch.tensor(losses, dtype=torch.float64)


# ---- upstream loss sites (float32-capable, logits-first order), a margin on the positives ----


def margin_cross_entropy_ref(logits, margin=0.0, tau=0.07, symmetric=False):
    """CE(logits, arange(B)) [+ CE(logits^T, arange(B))] after ``logits_ii -= m / tau``: eq. 3 on logits."""
    b = logits.shape[0]
    shifted = logits - torch.eye(b, dtype=logits.dtype, device=logits.device) * (margin / tau)
    target = torch.arange(b, device=logits.device)
    loss = F.cross_entropy(shifted, target)
    return loss + F.cross_entropy(shifted.t(), target) if symmetric else loss


def upstream_ezvsl_max_xmil_loss(img, aud, tau=0.03, margin=0.0):
    """EZ-VSL: Slogits = alpha / tau; logits = max_hw Slogits (``logits_ii -= m / tau``); CE(logits) + CE(logits^T)."""
    b = img.shape[0]
    slogits = alpha_ref(img, aud) / tau
    logits = slogits.reshape(b, b, -1).amax(dim=-1)
    return margin_cross_entropy_ref(logits, margin, tau, symmetric=True), slogits


def _soft_mean(a, weights):
    return (weights * a).sum(dim=(-1, -2)) / weights.sum(dim=(-1, -2))


def upstream_lvs_logits(img, aud, epsilon=0.65, epsilon2=0.4, trimap=True, neg=True, margin=0.0):
    """LVS: [sim1 - m | sim * (1 - 100 I) | sim2] / 0.07 with sigmoid temperature 0.03."""
    b = img.shape[0]
    a_all = alpha_ref(img, aud)                      # [B, B, H, W]
    a_own = (img * aud[:, :, None, None]).sum(1)     # [B, H, W]
    sim1 = _soft_mean(a_own, torch.sigmoid((a_own - epsilon) / 0.03)) - margin
    sim = _soft_mean(a_all, torch.sigmoid((a_all - epsilon) / 0.03))
    sim = sim * (1 - 100 * torch.eye(b, dtype=sim.dtype))
    cols = [sim1[:, None], sim]
    if neg:
        bg = 1 - torch.sigmoid((a_own - (epsilon2 if trimap else epsilon)) / 0.03)
        cols.append(_soft_mean(a_own, bg)[:, None])
    return torch.cat(cols, dim=1) / 0.07
