"""How close each patch is to its upstream at ``--margin 0``, and what ``m`` does at tau = 0.03.

Run from the repository root with the upstream clones named as for the tests::

    MARGINNCE_UPSTREAM_EZVSL=... MARGINNCE_UPSTREAM_LVS=... MARGINNCE_UPSTREAM_SLAVC=... \\
    MARGINNCE_UPSTREAM_FNAC=... PYTHONPATH=$PWD python -m tests.patch_parity > patches/parity.txt

Part 1 applies each patch to a temporary checkout of its pin (``tests/patch_upstreams.py``) and
evaluates the unpatched and the patched loss site on the same float32 features, ``N`` random
L2-normalised feature sets (seeds ``0 .. N-1``), counting the sets where the two losses are bitwise
equal and giving the largest relative difference. Part 2 needs no upstream: EZ-VSL's loss (through
the package's adapter, which is the patched loss) at initialisation-like features for the margins and
temperatures discussed in ``patches/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginnce_loss.adapters.ezvsl import max_xmil_loss

from .oracles import normalized_features
from .patch_upstreams import Modules, modules

Pair = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # seed -> (upstream loss(es), patched loss(es))


class _Feed(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _ezvsl(mods: Modules, b: int) -> Pair:
    torch.manual_seed(0)
    original = mods.original.EZVSL(0.03, 512)
    patched = mods.patched.EZVSL(0.03, 512, margin=0.0)

    def pair(seed: int):
        img, aud = normalized_features(b, 512, 7, 7, seed, dtype=torch.float32)
        return original.max_xmil_loss(img, aud)[0], patched.max_xmil_loss(img, aud)[0]
    return pair


def _fnac(mods: Modules, b: int, terms: slice) -> Pair:
    torch.manual_seed(0)
    original = mods.original.FNAC(0.03, 512, 0.0, 0.0)
    patched = mods.patched.FNAC(0.03, 512, 0.0, 0.0, margin=0.0)

    def pair(seed: int):
        img, aud = normalized_features(b, 512, 7, 7, seed, dtype=torch.float32)
        return (torch.stack(original.calculate_loss(img, aud)[0][terms]),
                torch.stack(patched.calculate_loss(img, aud)[0][terms]))
    return pair


def _slavc(mods: Modules, b: int) -> Pair:
    torch.manual_seed(0)
    args = (0.03, 512, 0.0, 0.0, 0.9, 0.9, False)
    original, patched = mods.original.SLAVC(*args), mods.patched.SLAVC(*args, margin=0.0)
    patched.load_state_dict(original.state_dict())
    for model in (original, patched):  # the features reach SLAVC's projections as given
        model.imgnet = model.momentum_imgnet = _Feed()
        model.audnet = model.momentum_audnet = nn.Identity()
        model.eval()

    def pair(seed: int):
        img, aud = normalized_features(b, 512, 7, 7, seed, dtype=torch.float32)
        with torch.no_grad():
            return original(img, aud, mode="test")[0], patched(img, aud, mode="test")[0]
    return pair


def _lvs(mods: Modules, b: int) -> Pair:
    args = Namespace(epsilon=0.65, epsilon2=0.4, tri_map=True, Neg=True, random_threshold=None, margin=0.0)
    original, patched = mods.original.AVENet(args), mods.patched.AVENet(args)
    for model in (original, patched):
        model.imgnet, model.audnet, model.avgpool = nn.Identity(), nn.Identity(), nn.Identity()
    target = torch.zeros(b, dtype=torch.long)

    def pair(seed: int):
        img, aud = normalized_features(b, 512, 14, 14, seed, dtype=torch.float32)
        with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)  # upstream's mask: .cuda()
            up = original(img, aud[:, :, None, None], args)[1]
        with torch.no_grad():
            ours = patched(img, aud[:, :, None, None], args)[1]
        return F.cross_entropy(up, target), F.cross_entropy(ours, target)  # what the patch's train.py minimises
    return pair


SITES = [  # (upstream, loss site, features, factory)
    ("ezvsl", "EZVSL.max_xmil_loss", "B=16, C=512, 7x7", lambda m: _ezvsl(m, 16)),
    ("fnac", "FNAC.calculate_loss: InfoNCE term", "B=16, C=512, 7x7", lambda m: _fnac(m, 16, slice(0, 1))),
    ("fnac", "FNAC.calculate_loss: the 3 FNS/TNS terms", "B=16, C=512, 7x7", lambda m: _fnac(m, 16, slice(1, 4))),
    ("slavc", "SLAVC.forward loss (random projections)", "B=16, C=512, 7x7", lambda m: _slavc(m, 16)),
    ("lvs", "CE(AVENet.forward logits, column 0)", "B=16, C=512, 14x14", lambda m: _lvs(m, 16)),
]


def parity(n: int, root: Path) -> list[str]:
    lines = [f"Part 1. --margin 0 against the pinned upstream: {n} random float32 feature sets (seeds 0..{n - 1})",
             "",
             f"{'upstream':<8}  {'loss site':<41}  {'features':<19}  {'bitwise':>8}  {'max rel diff':>12}  "
             f"{'median':>8}  example (upstream vs patched)"]
    loaded: dict[str, Modules] = {}
    for key, site, shape, factory in SITES:
        try:
            if key not in loaded:
                loaded[key] = modules(key, root / key)
        except pytest.skip.Exception as skip:
            lines.append(f"{key:<8}  {site:<41}  skipped: {skip}")
            continue
        pair = factory(loaded[key])
        rel, same, example = [], 0, ""
        for seed in range(n):
            up, ours = (x.detach().double().flatten() for x in pair(seed))
            same += torch.equal(up, ours)
            rel.append(((ours - up).abs() / up.abs()).max().item())
            if not example and not torch.equal(up, ours):
                k = int((ours - up).abs().argmax())
                example = f"seed {seed}: {up[k].item():.9f} vs {ours[k].item():.9f}"
        lines.append(f"{key:<8}  {site:<41}  {shape:<19}  {same:>4}/{n:<3}  {max(rel):>12.2e}  "
                     f"{statistics.median(rel):>8.1e}  {example or 'all bitwise'}")
    lines += ["", "The tests (tests/test_patches_upstream.py) hold every loss to 1e-5 relative."]
    return lines


def margins(seeds: int) -> list[str]:
    lines = ["", "Part 2. EZ-VSL's loss (the patched max_xmil_loss) with a margin, on initialisation-like features:",
             f"random L2-normalised float32 features (C=512, 7x7), mean over seeds 0..{seeds - 1}; -m/tau is the shift",
             "of the positive logit", "",
             f"{'tau':>5}  {'m':>7}  {'-m/tau':>7}  {'loss, B=2':>10}  {'loss, B=128':>11}"]
    for tau, m in [(0.03, 0.0), (0.03, -0.086), (0.03, -0.2), (0.07, 0.0), (0.07, -0.2)]:
        cells = []
        for b in (2, 128):
            values = [max_xmil_loss(*normalized_features(b, 512, 7, 7, s, dtype=torch.float32), tau=tau, margin=m)[0]
                      for s in range(seeds)]
            cells.append(sum(v.item() for v in values) / seeds)
        lines.append(f"{tau:>5}  {m:>7}  {abs(m) / tau:>7.2f}  {cells[0]:>10.4f}  {cells[1]:>11.4f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=50, help="random feature sets per loss site (default 50)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds averaged in part 2 (default 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        lines = parity(args.sets, Path(tmp))
    lines += margins(args.seeds)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
