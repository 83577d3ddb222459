"""What the tests of ``patches/`` share: what each patch is meant to be, reading it, and pinned
upstream checkouts with the patch applied (``tests/test_patches_*.py``, ``tests/patch_parity.py``).

A patch file is a comment header (what the patch changes and which compatibility fixes it carries)
followed by the ``git diff -U2`` output; ``git apply`` skips the header, :func:`split_header` cuts it
off, and :func:`parse_patch` reads the diff with ``unidiff``, refusing anything it would not give back
unchanged.

Checkouts come from ``MARGINNCE_UPSTREAM_{EZVSL,LVS,SLAVC,FNAC}`` (a git clone of the upstream
repository holding the pinned commit); :func:`source` skips the test, naming the variable, when it is
unset. The upstream modules are imported in isolation (their ``model``/``utils``/``models``/``datasets``
leave ``sys.modules`` as found); ``torchvision``'s ImageNet ResNet-18 is replaced in the imported
module by an unweighted one (no download is possible), and third-party modules that the imported
code names but never calls on the paths compared in-process (``sklearn``, and ``cv2``/``pandas`` for
LVS's dataloader) are stubbed when not installed. The training runs (``test_patches_train.py``) use
no stubs: they skip when a module the upstream imports is missing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from unidiff import LINE_TYPE_ADDED, LINE_TYPE_REMOVED, PatchedFile, PatchSet, UnidiffParseError

from .oracles import normalized_features, trained_like_features

REPO = Path(__file__).resolve().parents[1]
PATCHES = REPO / "patches"
MARGIN = -0.2


@dataclass(frozen=True)
class Upstream:
    key: str
    repository: str
    pin: str
    env: str
    files: frozenset  # every path the patch touches
    new_files: frozenset = frozenset()
    # added model.py line that brings in the package, and the name it must resolve to
    imports: tuple[str, str, str] = ("", "", "")  # (added line, module, attribute)
    scripts: tuple[str, ...] = ("train.py", "test.py")  # each gains --margin
    # third-party modules that train.py / test.py import (besides torch, torchvision, numpy, scipy, PIL)
    train_deps: tuple[str, ...] = ()
    test_deps: tuple[str, ...] = ()
    # words the patch header must contain: one per compatibility fix it carries
    fixes: tuple[str, ...] = ()

    @property
    def patch(self) -> Path:
        return PATCHES / f"{self.key}.patch"


_WEIGHTS = ("ResNet18_Weights.IMAGENET1K_V1", "TORCH_HOME", "pretrained=True")
_LOAD = ("weights_only=False", "numpy scalars")
_PYAV = ("PyAV >= 9", "flushed")

UPSTREAMS: dict[str, Upstream] = {
    u.key: u
    for u in [
        Upstream(
            "ezvsl", "stoneMo/EZ-VSL", "95ff5bff30191fed11856699a7669419fa59b356", "MARGINNCE_UPSTREAM_EZVSL",
            frozenset({"model.py", "train.py", "test.py", "audio_io.py"}),
            imports=("from marginnce_loss.adapters.ezvsl import max_xmil_loss as margin_max_xmil_loss",
                     "marginnce_loss.adapters.ezvsl", "max_xmil_loss"),
            train_deps=("av", "sklearn"), test_deps=("av", "sklearn", "cv2"), fixes=_PYAV + _WEIGHTS + _LOAD,
        ),
        Upstream(
            "lvs", "hche11/Localizing-Visual-Sounds-the-Hard-Way", "8fe8cbbf810e804cf8cc9b244bb5d77ec8aa8315",
            "MARGINNCE_UPSTREAM_LVS", frozenset({"model.py", "test.py", "train.py", "datasets/dataloader.py"}),
            frozenset({"train.py"}),
            imports=("from marginnce_loss.adapters.lvs import lvs_logits", "marginnce_loss.adapters.lvs", "lvs_logits"),
            train_deps=("cv2", "pandas", "sklearn", "matplotlib", "soundfile"),
            test_deps=("cv2", "pandas", "sklearn", "matplotlib", "soundfile"),
            fixes=("os.path.join", "trailing '/'", "skipped", "CPU", "map_location"),
        ),
        Upstream(
            "slavc", "stoneMo/SLAVC", "05b429c6f474ca6f1070d08e1d0142948d1625bf", "MARGINNCE_UPSTREAM_SLAVC",
            frozenset({"model.py", "train.py", "test.py", "audio_io.py"}),
            imports=("from marginnce_loss.adapters import margin_cross_entropy", "marginnce_loss.adapters",
                     "margin_cross_entropy"),
            train_deps=("av", "sklearn", "cv2", "timm", "tensorboardX"),
            test_deps=("av", "sklearn", "cv2", "timm"), fixes=_PYAV + _WEIGHTS + _LOAD,
        ),
        Upstream(
            "fnac", "OpenNLPLab/FNAC_AVL", "0a0ca78aa4b263fde37af85c82f4f6812853c6de", "MARGINNCE_UPSTREAM_FNAC",
            frozenset({"model.py", "train.py", "test.py"}),
            imports=("from marginnce_loss.adapters.ezvsl import max_xmil_loss as margin_max_xmil_loss",
                     "marginnce_loss.adapters.ezvsl", "max_xmil_loss"),
            train_deps=("av", "sklearn"), test_deps=("av", "sklearn", "cv2"), fixes=_WEIGHTS + _LOAD + ("png",),
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# Reading the patches (unidiff), checked against git's own reading


def split_header(text: str) -> tuple[str, str]:
    """``(header, diff)``: the lines before the first ``diff --git`` line, and the rest."""
    if text.startswith("diff --git "):
        return "", text
    at = text.find("\ndiff --git ")
    return (text, "") if at < 0 else (text[:at + 1], text[at + 1:])


def parse_patch(text: str) -> PatchSet:
    """``text`` as a :class:`unidiff.PatchSet`, refusing what unidiff alone lets through: no file,
    a file without hunks, or any line it did not take into a file or hunk (the parse must give the
    text back unchanged; a hunk shorter than its header already raises ``UnidiffParseError``)."""
    patch = PatchSet(text)
    if not len(patch):
        raise UnidiffParseError("diff: no file in it")
    for f in patch:
        if not len(f):
            raise UnidiffParseError(f"file {f.path!r}: expected at least one hunk")
    if str(patch) != text:
        raise UnidiffParseError("diff: lines outside any file header or hunk, or a hunk longer than its header")
    return patch


def patch_text(key: str) -> str:
    """The patch file as stored (``newline=''``: EZ-VSL's and SLAVC's ``audio_io.py`` have CRLF lines)."""
    with open(UPSTREAMS[key].patch, newline="") as f:
        return f.read()


def read_patch(key: str) -> PatchSet:
    return parse_patch(split_header(patch_text(key))[1])


def _lines(f: PatchedFile, line_type: str) -> list[str]:
    return [line.value.rstrip("\r\n") for hunk in f for line in hunk if line.line_type == line_type]


def added(f: PatchedFile) -> list[str]:
    """The added lines of ``f``, without their line end."""
    return _lines(f, LINE_TYPE_ADDED)


def removed(f: PatchedFile) -> list[str]:
    return _lines(f, LINE_TYPE_REMOVED)


def patched_file(key: str, path: str) -> PatchedFile:
    return next(f for f in read_patch(key) if f.path == path)


# --------------------------------------------------------------------------------------------
# Upstream checkouts

# Code and metadata only: the mirrors may lack some binary blobs (images/, fonts/), which no test needs.
_CHECKOUT_SUFFIXES = {".py", ".csv", ".txt", ".json", ".sh", ".md"}

# Third-party modules that the imported upstream code names but never calls on the in-process
# paths; stubbed only when they are not installed.
_STUBS = {
    "sklearn": {"sklearn.metrics": ("auc",), "sklearn.feature_extraction": (),
                "sklearn.feature_extraction.image": ("extract_patches_2d",)},
    "cv2": {},
    "pandas": {},
}


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{name} is a test stub ({name.split('.')[0]} is not installed)")
    return call


def install_stubs(modules: MutableMapping[str, types.ModuleType]) -> list[str]:
    """Put stub modules for the ``_STUBS`` packages that are not installed into ``modules``."""
    installed = []
    for top, subs in _STUBS.items():
        if top in modules or importlib.util.find_spec(top) is not None:
            continue
        for name in [top, *subs]:
            mod = types.ModuleType(name)
            mod.__doc__ = "test stub: not installed, and not called by the code under test"
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() must not fail on it
            for attr in subs.get(name, ()):
                setattr(mod, attr, _unavailable(f"{name}.{attr}"))
            modules[name] = mod
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(modules[parent], child, mod)
            installed.append(name)
    return installed


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def source(up: Upstream) -> Path:
    """The clone named by ``up.env``; skips the test when the variable is unset."""
    value = os.environ.get(up.env)
    if not value:
        pytest.skip(f"{up.env} is not set (a git clone of https://github.com/{up.repository})")
    src = Path(value)
    try:
        git("-C", str(src), "cat-file", "-e", f"{up.pin}^{{commit}}")
    except RuntimeError as err:
        pytest.fail(f"{up.env}={src}: expected a git clone holding commit {up.pin}: {err}")
    return src


def checkout(src: Path, pin: str, dest: Path) -> Path:
    """A temporary clone of ``src`` with the code of ``pin`` checked out (``src`` is not touched)."""
    git("clone", "--quiet", "--no-checkout", "--shared", str(src), str(dest))
    paths = [p for p in git("-C", str(dest), "ls-tree", "-r", "--name-only", pin).splitlines()
             if Path(p).suffix in _CHECKOUT_SUFFIXES]
    git("-C", str(dest), "checkout", "--quiet", pin, "--", *paths)
    return dest


def patched_checkout(key: str, dest: Path) -> Path:
    """A checkout of ``key``'s pin at ``dest`` with its patch applied (checked, and checked reversible)."""
    up = UPSTREAMS[key]
    tree = checkout(source(up), up.pin, dest)
    git("-C", str(tree), "apply", "--check", str(up.patch))
    git("-C", str(tree), "apply", str(up.patch))
    git("-C", str(tree), "apply", "-R", "--check", str(up.patch))  # README: undo with git apply -R
    return tree


@dataclass
class Trees:
    original: Path
    patched: Path


def trees(key: str, root: Path) -> Trees:
    up = UPSTREAMS[key]
    return Trees(checkout(source(up), up.pin, root / "original"), patched_checkout(key, root / "patched"))


@contextmanager
def isolated(directory: Path) -> Iterator[None]:
    """Import from ``directory`` first; afterwards its modules (and any stubs) leave ``sys.modules``."""
    local = {p.stem for p in directory.glob("*.py")}
    local |= {p.name for p in directory.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in local}
    for name in saved:
        del sys.modules[name]
    import torchvision  # noqa: F401  (imported before the stubs exist: it probes for third-party packages)

    stubs = install_stubs(sys.modules)
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))
        for name in [n for n in sys.modules if n.split(".")[0] in local or n in stubs]:
            del sys.modules[name]
        sys.modules.update(saved)


def _resnet18_without_weights(pretrained: bool = False, weights=None, **kwargs):
    """Stands in for ``resnet18(pretrained=True)`` (upstream) and ``resnet18(weights=...)`` (patched)."""
    import torchvision

    return torchvision.models.resnet18(weights=None, **kwargs)


def load_model_module(directory: Path) -> types.ModuleType:
    """``directory/model.py`` as a private module object, its ImageNet ResNet-18 made weightless."""
    with isolated(directory), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")  # LVS's models/ import matplotlib.pyplot
        module = importlib.import_module("model")
    if hasattr(module, "resnet18"):
        module.resnet18 = _resnet18_without_weights
    return module


@dataclass
class Modules:
    trees: Trees
    original: types.ModuleType
    patched: types.ModuleType


def modules(key: str, root: Path) -> Modules:
    t = trees(key, root)
    return Modules(t, load_model_module(t.original), load_model_module(t.patched))


# --------------------------------------------------------------------------------------------
# Comparing


def rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5, what: str = "") -> None:
    """Scalars: ``|a - e| <= rel * max(|a|, |e|)``; tensors: elementwise ``rel`` with an absolute
    floor of ``rel / 10`` times the largest ``|e|``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    if a.dim() == 0:
        bound = rel * max(abs(a.item()), abs(e.item()))
        assert abs(a.item() - e.item()) <= bound, f"{what}: {a.item()!r} != {e.item()!r} (rel {rel})"
        return
    if e.numel():
        torch.testing.assert_close(a, e, rtol=rel, atol=rel / 10 * e.abs().max().item(), msg=lambda m: f"{what}: {m}")


def oracle_close(actual: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor, margin: float, tau: float,
                 what: str) -> None:
    """A loss against an oracle computed another way (``F.cross_entropy``): ``1e-5`` relative
    plus the two computations' rounding floor, ``8 eps`` times the largest logit magnitude (for a
    nearly-zero loss of a trained-like batch both are ``log(1 + tiny)`` rounded differently)."""
    scale = logits.detach().abs().max().item() + abs(margin) / tau
    bound = 1e-5 * abs(expected.item()) + 8 * torch.finfo(logits.dtype).eps * scale
    assert abs(actual.item() - expected.item()) <= bound, f"{what}: {actual.item()!r} != {expected.item()!r}"


FEATURES = {
    "random": lambda b, c, h, w, dtype, seed: normalized_features(b, c, h, w, seed, dtype=dtype),
    "trained": lambda b, c, h, w, dtype, seed: trained_like_features(b, c, h, w, seed, dtype=dtype),
}
INPUTS = [(kind, dtype) for kind in sorted(FEATURES) for dtype in (torch.float32, torch.float64)]
INPUT_IDS = [f"{kind}-{str(dtype)[6:]}" for kind, dtype in INPUTS]
