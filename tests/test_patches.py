"""The upstream patches in ``patches/`` (issue 6).

Always on: every patch is a well-formed unified diff (our own small parser below), touches exactly
the files it is meant to, plugs the margin in through the package names it imports (which must
exist), adds ``--margin`` to the scripts, and ``patches/README.md`` names every patch and pin.

Gated on ``MARGINNCE_UPSTREAM_{EZVSL,LVS,SLAVC,FNAC}`` (a git clone of the upstream repository
holding the pinned commit; skipped when unset): the pin is checked out twice in temporary clones,
the patch applied to one (and reversed with ``git apply -R --check``), and the patched loss is
compared with the unpatched upstream loss at ``margin = 0`` and with our adapter (or the paper's
eq. 3 written out) at ``margin = -0.2``, on random and on trained-like features. The upstream modules are
imported in isolation (their ``model``/``utils``/``models``/``datasets`` leave ``sys.modules`` as
found); ``torchvision``'s ``resnet18(pretrained=True)`` is replaced in the imported module by an
unweighted ResNet-18 (no download is possible), and third-party modules the imported code names
but never calls here (``sklearn``, and ``cv2``/``pandas`` for LVS's dataloader) are stubbed when
not installed.

Tolerances (``rel_close``): scalars ``|a - e| <= 1e-5 * max(|a|, |e|)``; tensors elementwise
``1e-5`` relative with an absolute floor of ``1e-6`` times the tensor's largest magnitude (einsum
and matmul sum in different orders); LVS logits are compared per column group (positive,
negatives, the -99 x diagonal, background) so the diagonal's magnitude does not loosen the others.
Against the paper's eq. 3 written with ``F.cross_entropy`` (``spec_close``) the floor is the
rounding of the logits themselves, ``8 eps`` times their largest magnitude: a trained-like batch
has a loss near ``1e-12`` that both ways compute as ``log(1 + tiny)``, rounded differently.

A batch of one clip (upstream's evaluation batch): ``margin_nce`` refuses ``B = 1`` by contract, but
the loss sites the patches call (``adapters.ezvsl.max_xmil_loss``, ``adapters.margin_cross_entropy``)
return 0 attached to the graph, as upstream's cross-entropy over a single logit does; the
``batch_size_one`` tests check that parity (loss, gradients, localisation map) for EZ-VSL, FNAC and SLAVC.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import py_compile
import re
import subprocess
import sys
import types
from argparse import Namespace
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, MutableMapping, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginnce_loss.adapters import ezvsl as ezvsl_adapter
from marginnce_loss.adapters import lvs as lvs_adapter

from .reference import normalized_features, trained_like_features

REPO = Path(__file__).resolve().parents[1]
PATCHES = REPO / "patches"


# --------------------------------------------------------------------------------------------
# What each patch is meant to be


@dataclass(frozen=True)
class Upstream:
    key: str
    repository: str
    pin: str
    env: str
    files: frozenset  # every path the patch touches
    new_files: frozenset = frozenset()
    # added model.py line that brings in the package, and the name it must resolve to
    imports: Tuple[str, str, str] = ("", "", "")  # (added line, module, attribute)
    scripts: Tuple[str, ...] = ("train.py", "test.py")  # each gains --margin

    @property
    def patch(self) -> Path:
        return PATCHES / f"{self.key}.patch"


UPSTREAMS: Dict[str, Upstream] = {
    u.key: u
    for u in [
        Upstream(
            "ezvsl", "stoneMo/EZ-VSL", "95ff5bff30191fed11856699a7669419fa59b356", "MARGINNCE_UPSTREAM_EZVSL",
            frozenset({"model.py", "train.py", "test.py"}),
            imports=("from marginnce_loss.adapters.ezvsl import max_xmil_loss as margin_max_xmil_loss",
                     "marginnce_loss.adapters.ezvsl", "max_xmil_loss"),
        ),
        Upstream(
            "lvs", "hche11/Localizing-Visual-Sounds-the-Hard-Way", "8fe8cbbf810e804cf8cc9b244bb5d77ec8aa8315",
            "MARGINNCE_UPSTREAM_LVS", frozenset({"model.py", "test.py", "train.py"}), frozenset({"train.py"}),
            imports=("from marginnce_loss.adapters.lvs import lvs_logits", "marginnce_loss.adapters.lvs", "lvs_logits"),
        ),
        Upstream(
            "slavc", "stoneMo/SLAVC", "05b429c6f474ca6f1070d08e1d0142948d1625bf", "MARGINNCE_UPSTREAM_SLAVC",
            frozenset({"model.py", "train.py", "test.py"}),
            imports=("from marginnce_loss.adapters import margin_cross_entropy", "marginnce_loss.adapters",
                     "margin_cross_entropy"),
        ),
        Upstream(
            "fnac", "OpenNLPLab/FNAC_AVL", "0a0ca78aa4b263fde37af85c82f4f6812853c6de", "MARGINNCE_UPSTREAM_FNAC",
            frozenset({"model.py", "train.py", "test.py"}),
            imports=("from marginnce_loss.adapters.ezvsl import max_xmil_loss as margin_max_xmil_loss",
                     "marginnce_loss.adapters.ezvsl", "max_xmil_loss"),
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# A small unified-diff parser


@dataclass
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: List[str]  # body lines with their ' ', '-', '+' or '\\' prefix


@dataclass
class FileDiff:
    old_path: Optional[str]  # None for /dev/null (a new file)
    new_path: Optional[str]  # None for /dev/null (a deleted file)
    hunks: List[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else self.old_path  # type: ignore[return-value]

    def lines(self, prefix: str) -> List[str]:
        return [line[1:] for h in self.hunks for line in h.lines if line.startswith(prefix)]


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_EXTENDED = ("index ", "new file mode ", "deleted file mode ", "old mode ", "new mode ", "similarity index ",
             "rename from ", "rename to ", "copy from ", "copy to ", "dissimilarity index ")


def _header_path(line: str, marker: str, side: str, lineno: int) -> Optional[str]:
    rest = line[len(marker):].split("\t")[0]
    if rest == "/dev/null":
        return None
    if not rest.startswith(side + "/") or len(rest) == len(side) + 1:
        raise ValueError(f"line {lineno}: expected '{marker}{side}/<path>' or '{marker}/dev/null', got {line!r}")
    return rest[len(side) + 1:]


def parse_unified_diff(text: str) -> List[FileDiff]:
    """Parse a (git) unified diff into files and hunks, checking its structure.

    Accepted: optional ``diff --git a/X b/X`` and extended header lines, then ``--- a/X`` (or
    ``/dev/null``), ``+++ b/X`` (or ``/dev/null``), then hunks ``@@ -l[,n] +l[,n] @@`` whose body
    lines (`` ``, ``-``, ``+``, ``\\ No newline...``) add up to exactly ``n`` old and new lines, in
    increasing, non-overlapping order. Anything else raises ``ValueError`` naming the line.
    """
    if not text.endswith("\n"):
        raise ValueError("diff: expected the text to end with a newline")
    lines = text.split("\n")[:-1]
    files: List[FileDiff] = []
    i = 0
    while i < len(lines):
        git_paths: Optional[Tuple[str, str]] = None
        if lines[i].startswith("diff --git "):
            m = re.match(r"^diff --git a/(\S+) b/(\S+)$", lines[i])
            if m is None:
                raise ValueError(f"line {i + 1}: malformed 'diff --git' header {lines[i]!r}")
            git_paths = (m.group(1), m.group(2))
            i += 1
            while i < len(lines) and lines[i].startswith(_EXTENDED):
                i += 1
        if i + 1 >= len(lines) or not lines[i].startswith("--- ") or not lines[i + 1].startswith("+++ "):
            got = lines[i] if i < len(lines) else "end of text"
            raise ValueError(f"line {i + 1}: expected a '--- ' line followed by a '+++ ' line, got {got!r}")
        fd = FileDiff(_header_path(lines[i], "--- ", "a", i + 1), _header_path(lines[i + 1], "+++ ", "b", i + 2))
        if fd.old_path is None and fd.new_path is None:
            raise ValueError(f"line {i + 1}: both sides are /dev/null")
        if fd.old_path is not None and fd.new_path is not None and fd.old_path != fd.new_path:
            raise ValueError(f"line {i + 1}: expected the same path on both sides, got {fd.old_path!r} and {fd.new_path!r}")
        if git_paths is not None and fd.path not in git_paths:
            raise ValueError(f"line {i + 1}: path {fd.path!r} does not match the 'diff --git' header {git_paths}")
        i += 2
        old_end = new_end = 0  # last old/new line covered by the previous hunk
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK.match(lines[i])
            if m is None:
                raise ValueError(f"line {i + 1}: malformed hunk header {lines[i]!r}")
            hunk = Hunk(int(m.group(1)), int(m.group(2) or 1), int(m.group(3)), int(m.group(4) or 1), [])
            if (hunk.old_len and hunk.old_start <= old_end) or (hunk.new_len and hunk.new_start <= new_end):
                raise ValueError(f"line {i + 1}: hunk overlaps or precedes the previous one")
            if (fd.old_path is None) != (hunk.old_start == 0 and hunk.old_len == 0):
                raise ValueError(f"line {i + 1}: a hunk from /dev/null must be '-0,0' and only then")
            header_line = i + 1
            i += 1
            old_n = new_n = 0
            while i < len(lines) and (old_n < hunk.old_len or new_n < hunk.new_len):
                line = lines[i]
                tag = line[:1]
                if tag == " " or line == "":  # some tools strip the blank context line's space
                    old_n += 1
                    new_n += 1
                elif tag == "-":
                    old_n += 1
                elif tag == "+":
                    new_n += 1
                elif tag == "\\":
                    pass
                else:
                    raise ValueError(f"line {i + 1}: unexpected line inside the hunk of line {header_line}: {line!r}")
                hunk.lines.append(line if line else " ")
                i += 1
            while i < len(lines) and lines[i].startswith("\\"):
                hunk.lines.append(lines[i])
                i += 1
            if (old_n, new_n) != (hunk.old_len, hunk.new_len):
                raise ValueError(
                    f"line {header_line}: hunk declares -{hunk.old_len} +{hunk.new_len} lines, "
                    f"its body has -{old_n} +{new_n}"
                )
            old_end = hunk.old_start + hunk.old_len - 1
            new_end = hunk.new_start + hunk.new_len - 1
            fd.hunks.append(hunk)
        if not fd.hunks:
            raise ValueError(f"file {fd.path!r}: expected at least one hunk")
        files.append(fd)
        if i < len(lines) and not lines[i].startswith(("diff --git ", "--- ")):
            raise ValueError(f"line {i + 1}: expected a hunk or the next file, got {lines[i]!r}")
    if not files:
        raise ValueError("diff: no file in it")
    return files


def _read_patch(key: str) -> List[FileDiff]:
    return parse_unified_diff(UPSTREAMS[key].patch.read_text())


# --------------------------------------------------------------------------------------------
# Always-on tests


def test_parser_reads_a_well_formed_diff():
    text = (
        "diff --git a/m.py b/m.py\nindex 1..2 100644\n--- a/m.py\n+++ b/m.py\n"
        "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n@@ -10 +10,2 @@\n x\n+y\n"
        "--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n+1\n+2\n\\ No newline at end of file\n"
    )
    files = parse_unified_diff(text)
    assert [f.path for f in files] == ["m.py", "new.py"]
    assert files[0].old_path == "m.py" and files[1].old_path is None
    assert [(h.old_start, h.old_len, h.new_start, h.new_len) for h in files[0].hunks] == [(1, 3, 1, 3), (10, 1, 10, 2)]
    assert files[0].lines("+") == ["B", "y"] and files[0].lines("-") == ["b"]
    assert files[1].lines("+") == ["1", "2"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n+C\n", "expected a hunk or the next file"),  # one + too many
        ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,3 @@\n a\n-b\n+B\n", "declares -2 +3"),  # one + too few
        ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n", "declares -3 +3"),  # truncated hunk
        ("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b\nstray\n", "expected a hunk or the next file"),
        ("--- a/m.py\n+++ b/n.py\n@@ -1 +1 @@\n-a\n+b\n", "same path"),
        ("--- m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b\n", "'--- a/<path>'"),
        ("--- a/m.py\n+++ b/m.py\n", "at least one hunk"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b\n@@ -1 +1 @@\n-a\n+b\n", "overlaps"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1,1 +1,1 @\n-a\n+b\n", "malformed hunk header"),
        ("diff --git a/m.py b/m.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n", "does not match"),
        ("--- /dev/null\n+++ b/m.py\n@@ -1 +1 @@\n+a\n", "from /dev/null"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b", "end with a newline"),
        ("", "end with a newline"),
    ],
)
def test_parser_rejects_malformed_diffs(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_unified_diff(text)


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_touches_exactly_its_files(key):
    up = UPSTREAMS[key]
    files = _read_patch(key)
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths)), f"{up.patch.name}: a file appears twice: {paths}"
    assert set(paths) == up.files
    assert {f.path for f in files if f.old_path is None} == up.new_files
    assert all(f.new_path is not None for f in files), f"{up.patch.name} deletes a file"


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_hunks_have_short_context(key):
    """Made with ``git diff -U2``: at most two context lines before and after each change."""
    for f in _read_patch(key):
        for h in f.hunks:
            tags = [line[0] for line in h.lines if not line.startswith("\\")]
            lead = len(tags) - len("".join(tags).lstrip(" "))
            trail = len(tags) - len("".join(tags).rstrip(" "))
            assert lead <= 2 and trail <= 2, f"{key}.patch {f.path} @@ -{h.old_start}: context {lead}/{trail} lines"


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_imports_names_that_exist_in_the_package(key):
    up = UPSTREAMS[key]
    model = next(f for f in _read_patch(key) if f.path == "model.py")
    added, module, attribute = up.imports
    assert added in model.lines("+")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert sum(line.strip().startswith("self.margin = ") for line in model.lines("+")) == 1


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_adds_a_margin_option_to_the_scripts(key):
    files = {f.path: f for f in _read_patch(key)}
    for script in UPSTREAMS[key].scripts:
        added = files[script].lines("+")
        options = [line for line in added if "add_argument('--margin'" in line]
        assert len(options) == 1, f"{key}.patch {script}: expected one --margin option, got {options}"
        assert "default=0.0" in options[0] and "type=float" in options[0]


@pytest.mark.parametrize("key", ["ezvsl", "slavc", "fnac"])
def test_ezvsl_family_scripts_pass_the_margin_to_the_model(key):
    files = {f.path: f for f in _read_patch(key)}
    for script in ("train.py", "test.py"):
        assert sum("margin=args.margin)" in line for line in files[script].lines("+")) == 1, script


def test_ezvsl_patch_replaces_the_upstream_loss():
    model = next(f for f in _read_patch("ezvsl") if f.path == "model.py")
    assert any("F.cross_entropy(logits, labels)" in line for line in model.lines("-"))
    assert "        return margin_max_xmil_loss(img, aud, self.tau, self.margin)" in model.lines("+")


def test_slavc_patch_replaces_the_upstream_loss():
    model = next(f for f in _read_patch("slavc") if f.path == "model.py")
    assert "        loss = F.cross_entropy(a2i, labels) + F.cross_entropy(i2a, labels)" in model.lines("-")
    assert ("        loss = margin_cross_entropy(a2i, self.margin, self.tau) + "
            "margin_cross_entropy(i2a, self.margin, self.tau)") in model.lines("+")


def test_lvs_patch_drops_the_hard_coded_cuda_mask():
    model = next(f for f in _read_patch("lvs") if f.path == "model.py")
    assert any(".cuda()" in line for line in model.lines("-"))
    assert not any(".cuda(" in line for line in model.lines("+"))


def test_lvs_training_script_compiles():
    train = next(f for f in _read_patch("lvs") if f.path == "train.py")
    source = "\n".join(train.lines("+")) + "\n"
    compile(source, "train.py", "exec")
    assert "F.cross_entropy(logits, target)" in source and ".cuda(" not in source


def test_readme_names_every_patch_and_pin():
    readme = (PATCHES / "README.md").read_text()
    for up in UPSTREAMS.values():
        assert up.patch.name in readme and up.pin in readme and up.repository in readme, up.key
    assert "git apply -R" in readme and "--check" in readme


# --------------------------------------------------------------------------------------------
# Gated: real upstream checkouts

# Code and metadata only: the mirrors may lack some binary blobs (images/, fonts/), which no test needs.
_CHECKOUT_SUFFIXES = {".py", ".csv", ".txt", ".json", ".sh", ".md"}

# Third-party modules that the imported upstream code names but never calls on the paths tested
# here; stubbed only when they are not installed.
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


def install_stubs(modules: MutableMapping[str, types.ModuleType]) -> List[str]:
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


def _git(*args: str, cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _source(up: Upstream) -> Path:
    value = os.environ.get(up.env)
    if not value:
        pytest.skip(f"{up.env} is not set (a git clone of https://github.com/{up.repository})")
    src = Path(value)
    try:
        _git("-C", str(src), "cat-file", "-e", f"{up.pin}^{{commit}}")
    except RuntimeError as err:
        pytest.fail(f"{up.env}={src}: expected a git clone holding commit {up.pin}: {err}")
    return src


def _checkout(src: Path, pin: str, dest: Path) -> Path:
    """A temporary clone of ``src`` with the code of ``pin`` checked out (``src`` is not touched)."""
    _git("clone", "--quiet", "--no-checkout", "--shared", str(src), str(dest))
    paths = [p for p in _git("-C", str(dest), "ls-tree", "-r", "--name-only", pin).splitlines()
             if Path(p).suffix in _CHECKOUT_SUFFIXES]
    _git("-C", str(dest), "checkout", "--quiet", pin, "--", *paths)
    return dest


@dataclass
class Trees:
    original: Path
    patched: Path


def _trees(key: str, factory: pytest.TempPathFactory) -> Trees:
    up = UPSTREAMS[key]
    src = _source(up)
    root = factory.mktemp(f"upstream-{key}")
    original = _checkout(src, up.pin, root / "original")
    patched = _checkout(src, up.pin, root / "patched")
    _git("-C", str(patched), "apply", "--check", str(up.patch))
    _git("-C", str(patched), "apply", str(up.patch))
    _git("-C", str(patched), "apply", "-R", "--check", str(up.patch))  # README: undo with git apply -R
    return Trees(original, patched)


@contextmanager
def _isolated(directory: Path) -> Iterator[None]:
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


def _resnet18_without_weights(pretrained: bool = False, **kwargs):
    import torchvision

    return torchvision.models.resnet18(weights=None, **kwargs)


def _load_model_module(directory: Path) -> types.ModuleType:
    """``directory/model.py`` as a private module object, its ImageNet ResNet-18 made weightless."""
    with _isolated(directory), pytest.MonkeyPatch.context() as mp:
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


def _modules(key: str, factory: pytest.TempPathFactory) -> Modules:
    trees = _trees(key, factory)
    return Modules(trees, _load_model_module(trees.original), _load_model_module(trees.patched))


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


FEATURES = {
    "random": lambda b, c, h, w, dtype, seed: normalized_features(b, c, h, w, seed, dtype=dtype),
    "trained": lambda b, c, h, w, dtype, seed: trained_like_features(b, c, h, w, seed, dtype=dtype),
}
INPUTS = [(kind, dtype) for kind in sorted(FEATURES) for dtype in (torch.float32, torch.float64)]
INPUT_IDS = [f"{kind}-{str(dtype)[6:]}" for kind, dtype in INPUTS]
MARGIN = -0.2


def spec_close(actual: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor, margin: float, tau: float,
               what: str) -> None:
    """A loss against the paper's eq. 3 computed another way (``F.cross_entropy``): ``1e-5`` relative
    plus the two computations' rounding floor, ``8 eps`` times the largest logit magnitude (for a
    nearly-zero loss of a trained-like batch both are ``log(1 + tiny)`` rounded differently)."""
    scale = logits.detach().abs().max().item() + abs(margin) / tau
    bound = 1e-5 * abs(expected.item()) + 8 * torch.finfo(logits.dtype).eps * scale
    assert abs(actual.item() - expected.item()) <= bound, f"{what}: {actual.item()!r} != {expected.item()!r}"


def _margin_ce(logits: torch.Tensor, margin: float, tau: float) -> torch.Tensor:
    """The paper's eq. 3 with the margin on the diagonal, as an adapter puts it on each upstream logit matrix:
    cross-entropy against the diagonal after ``logits_ii -= margin / tau``."""
    b = logits.shape[0]
    shifted = logits - torch.eye(b, dtype=logits.dtype) * (margin / tau)
    return F.cross_entropy(shifted, torch.arange(b))


# ---- EZ-VSL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ezvsl(tmp_path_factory) -> Modules:
    return _modules("ezvsl", tmp_path_factory)


def _ezvsl_models(mods: Modules, dim: int, margin: float):
    torch.manual_seed(0)
    original = mods.original.EZVSL(0.03, dim)
    patched = mods.patched.EZVSL(0.03, dim, margin=margin)
    patched.load_state_dict(original.state_dict())
    return original.eval(), patched.eval()


@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_ezvsl_loss_matches_upstream_and_adapter(ezvsl, kind, dtype):
    img, aud = FEATURES[kind](12, 64, 7, 7, dtype, 5)
    original, patched = _ezvsl_models(ezvsl, 64, 0.0)
    up_loss, up_slogits = original.max_xmil_loss(img, aud)
    loss, slogits = patched.max_xmil_loss(img, aud)
    rel_close(loss, up_loss, what="margin 0 loss")
    rel_close(slogits, up_slogits, what="Slogits")

    patched.margin = MARGIN
    loss_m, slogits_m = patched.max_xmil_loss(img, aud)
    adapter_loss, _ = ezvsl_adapter.max_xmil_loss(img, aud, tau=0.03, margin=MARGIN)
    rel_close(loss_m, adapter_loss, what="margin -0.2 loss vs adapter")
    logits = up_slogits.flatten(-2).max(dim=-1).values
    spec = _margin_ce(logits, MARGIN, 0.03) + _margin_ce(logits.t(), MARGIN, 0.03)
    spec_close(loss_m, spec, logits, MARGIN, 0.03, what="margin -0.2 loss vs eq. 3")
    assert loss_m.item() < up_loss.item() or up_loss.item() == 0.0  # a negative margin loosens the positives
    rel_close(slogits_m, up_slogits, what="Slogits do not depend on the margin")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_ezvsl_forward_through_the_backbones(ezvsl, margin):
    original, patched = _ezvsl_models(ezvsl, 512, margin)
    g = torch.Generator().manual_seed(1)
    image, spec = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_loss, up_map = original(image, spec)
        loss, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    if margin == 0.0:
        rel_close(loss, up_loss, what="loss")
    else:
        assert loss.item() < up_loss.item()


def test_ezvsl_constructor_default_margin_is_zero(ezvsl):
    assert inspect.signature(ezvsl.patched.EZVSL.__init__).parameters["margin"].default == 0.0


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_ezvsl_loss_with_batch_size_one(ezvsl, margin):
    """validate()/test.py call forward with batch_size=1: upstream's CE over one logit is 0, and so is
    the patched loss, at any margin, still attached to the graph (zero gradients, as upstream's)."""
    original, patched = _ezvsl_models(ezvsl, 64, margin)
    grads = []
    for model in (original, patched):
        img, aud = normalized_features(1, 64, 7, 7, 0, dtype=torch.float32)
        img.requires_grad_(True), aud.requires_grad_(True)
        loss, slogits = model.max_xmil_loss(img, aud)
        loss.backward()
        grads.append((loss.detach(), slogits.detach(), img.grad, aud.grad))
    (up_loss, up_slogits, up_gimg, up_gaud), (loss, slogits, gimg, gaud) = grads
    assert loss.item() == up_loss.item() == 0.0
    rel_close(slogits, up_slogits, what="Slogits")
    assert torch.equal(gimg, up_gimg) and torch.equal(gaud, up_gaud) and not gimg.any() and not gaud.any()


def test_ezvsl_forward_with_batch_size_one(ezvsl):
    original, patched = _ezvsl_models(ezvsl, 512, MARGIN)
    g = torch.Generator().manual_seed(3)
    image, spec = torch.randn(1, 3, 224, 224, generator=g), torch.randn(1, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_loss, up_map = original(image, spec)
        loss, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    assert loss.item() == up_loss.item() == 0.0


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patched_files_compile(key, tmp_path_factory):
    trees = _trees(key, tmp_path_factory)
    for path in UPSTREAMS[key].files:
        py_compile.compile(str(trees.patched / path), cfile=str(tmp_path_factory.mktemp("pyc") / "x.pyc"), doraise=True)


# ---- FNAC -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fnac(tmp_path_factory) -> Modules:
    return _modules("fnac", tmp_path_factory)


def _fnac_models(mods: Modules, dim: int, margin: float):
    torch.manual_seed(0)
    original = mods.original.FNAC(0.03, dim, 0.0, 0.0)
    patched = mods.patched.FNAC(0.03, dim, 0.0, 0.0, margin=margin)
    patched.load_state_dict(original.state_dict())
    return original.eval(), patched.eval()


@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_fnac_loss_matches_upstream_and_adapter(fnac, kind, dtype):
    img, aud = FEATURES[kind](12, 64, 7, 7, dtype, 6)
    original, patched = _fnac_models(fnac, 64, 0.0)
    up_losses, up_slogits = original.calculate_loss(img, aud)
    losses, slogits = patched.calculate_loss(img, aud)
    assert len(losses) == len(up_losses) == 4
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"margin 0, loss term {k}")
    rel_close(slogits, up_slogits, what="Slogits")

    patched.margin = MARGIN
    losses_m, _ = patched.calculate_loss(img, aud)
    rel_close(losses_m[0], ezvsl_adapter.max_xmil_loss(img, aud, tau=0.03, margin=MARGIN)[0], what="InfoNCE term vs adapter")
    logits = up_slogits.flatten(-2).max(dim=-1).values
    spec = _margin_ce(logits, MARGIN, 0.03) + _margin_ce(logits.t(), MARGIN, 0.03)
    spec_close(losses_m[0], spec, logits, MARGIN, 0.03, what="InfoNCE term vs eq. 3")
    for k in (1, 2, 3):  # the false-negative (FNS/TNS) terms do not see the margin
        rel_close(losses_m[k], up_losses[k], what=f"loss term {k} at margin -0.2")


def test_fnac_forward_through_the_backbones(fnac):
    original, patched = _fnac_models(fnac, 512, 0.0)
    g = torch.Generator().manual_seed(2)
    image, spec = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 1, 32, 40, generator=g)
    with torch.no_grad():
        up_losses, up_map = original(image, spec)
        losses, avl_map = patched(image, spec)
    rel_close(avl_map, up_map, what="localisation map")
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"loss term {k}")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_fnac_loss_with_batch_size_one(fnac, margin):
    """validate()/test.py call forward with batch_size=1: every loss term is upstream's, the InfoNCE
    term 0 at any margin."""
    img, aud = normalized_features(1, 64, 7, 7, 0, dtype=torch.float32)
    original, patched = _fnac_models(fnac, 64, margin)
    up_losses, up_slogits = original.calculate_loss(img, aud)
    losses, slogits = patched.calculate_loss(img, aud)
    assert len(losses) == len(up_losses) == 4
    assert losses[0].item() == up_losses[0].item() == 0.0
    for k, (value, expected) in enumerate(zip(losses, up_losses)):
        rel_close(value, expected, what=f"loss term {k}")
    rel_close(slogits, up_slogits, what="Slogits")


# ---- SLAVC ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slavc(tmp_path_factory) -> Modules:
    return _modules("slavc", tmp_path_factory)


class _Feed(nn.Module):
    """Stands in for a backbone: returns its input flattened (SLAVC unflattens it to [B, 512, 7, 7])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _slavc_models(mods: Modules, projections: str):
    torch.manual_seed(0)
    args = (0.03, 512, 0.0, 0.0, 0.9, 0.9, False)
    original = mods.original.SLAVC(*args)
    patched = mods.patched.SLAVC(*args, margin=0.0)
    patched.load_state_dict(original.state_dict())
    for model in (original, patched):
        model.imgnet = model.momentum_imgnet = _Feed()
        model.audnet = model.momentum_audnet = nn.Identity()
        if projections == "identity":  # the features reach the loss as given
            for name in ("img_proj1", "img_proj2", "aud_proj1", "aud_proj2"):
                setattr(model, name, nn.Identity())
                setattr(model, "momentum_" + name, nn.Identity())
    return original.eval(), patched.eval()


def _slavc_reference(model, image, audio, margin: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """SLAVC's loss written from its formula, the margin as eq. 3 puts it, on the positive logits:
    ``i2a_nm = log sum_hw softmax_m(a1 / tau) * softmax_hw(a2 / tau)`` (a1, a2 the two projections'
    response maps against the momentum audio), likewise ``a2i`` with momentum images and online audio;
    ``CE(a2i - (m / tau) I) + CE(i2a - (m / tau) I)``. Returns the loss and the logits."""
    tau = model.tau
    img1, img2 = model.forward_img_features(model.imgnet, model.img_proj1, model.img_proj2, image)
    aud1, aud2 = model.forward_aud_features(model.audnet, model.aud_proj1, model.aud_proj2, audio)
    img1_t, img2_t = model.forward_img_features(model.momentum_imgnet, model.momentum_img_proj1, model.momentum_img_proj2, image)
    aud1_t, aud2_t = model.forward_aud_features(model.momentum_audnet, model.momentum_aud_proj1, model.momentum_aud_proj2, audio)

    def pair_logits(i1, i2, a1, a2):
        r1 = (i1.unsqueeze(1) * a1[None, :, :, None, None]).sum(2).flatten(-2) / tau  # [n, m, hw]
        r2 = (i2.unsqueeze(1) * a2[None, :, :, None, None]).sum(2).flatten(-2) / tau
        return torch.log((r1.softmax(dim=1) * r2.softmax(dim=2)).sum(2))

    i2a = pair_logits(img1, img2, aud1_t, aud2_t)
    a2i = pair_logits(img1_t, img2_t, aud1, aud2)
    return _margin_ce(a2i, margin, tau) + _margin_ce(i2a, margin, tau), torch.cat([i2a, a2i])


# identity projections carry the prepared (trained-like) features to the loss; random ones scramble them
SLAVC_CASES = [("identity", kind, dtype) for kind, dtype in INPUTS]
SLAVC_CASES += [("random", kind, dtype) for kind, dtype in INPUTS if kind == "random"]


@pytest.mark.parametrize("projections, kind, dtype", SLAVC_CASES,
                         ids=[f"{p}-{k}-{str(d)[6:]}" for p, k, d in SLAVC_CASES])
def test_slavc_loss_matches_upstream_and_spec(slavc, projections, kind, dtype):
    original, patched = _slavc_models(slavc, projections)
    original, patched = original.to(dtype), patched.to(dtype)
    img, aud = FEATURES[kind](8, 512, 7, 7, dtype, 7)
    with torch.no_grad():
        up_loss, up_map = original(img, aud, mode="test")
        loss, avl_map = patched(img, aud, mode="test")
        rel_close(loss, up_loss, what="margin 0 loss")
        rel_close(avl_map, up_map, what="localisation map")
        reference, logits = _slavc_reference(original, img, aud, 0.0)
        spec_close(reference, up_loss, logits, 0.0, original.tau, what="reference at margin 0 vs upstream")

        patched.margin = MARGIN
        loss_m, _ = patched(img, aud, mode="test")
        spec, logits = _slavc_reference(original, img, aud, MARGIN)
    spec_close(loss_m, spec, logits, MARGIN, original.tau, what="margin -0.2 vs eq. 3")
    assert loss_m.item() < up_loss.item() or up_loss.item() == 0.0


def test_slavc_train_mode_matches_upstream(slavc):
    """mode='train' also runs the momentum update; both models start equal and stay equal."""
    original, patched = _slavc_models(slavc, "random")
    original.train(), patched.train()
    img, aud = normalized_features(6, 512, 7, 7, 9, dtype=torch.float32)
    for _ in range(2):
        up_loss, _ = original(img, aud)
        loss, _ = patched(img, aud)
        rel_close(loss, up_loss, what="train-mode loss")
        up_loss.backward(), loss.backward()
    for (name, p), (_, q) in zip(original.named_parameters(), patched.named_parameters()):
        if p.grad is not None:
            rel_close(q.grad, p.grad, rel=1e-4, what=f"grad {name}")


@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_slavc_forward_with_batch_size_one(slavc, margin):
    """SLAVC's test.py calls forward (which computes the loss) with batch_size=1 by default: the
    loss is upstream's 0 at any margin, the map upstream's."""
    original, patched = _slavc_models(slavc, "identity")
    patched.margin = margin
    img, aud = normalized_features(1, 512, 7, 7, 0, dtype=torch.float32)
    with torch.no_grad():
        up_loss, up_map = original(img, aud, mode="test")
        loss, avl_map = patched(img, aud, mode="test")
    rel_close(avl_map, up_map, what="localisation map")
    assert loss.item() == up_loss.item() == 0.0


def test_slavc_constructor_default_margin_is_zero(slavc):
    assert inspect.signature(slavc.patched.SLAVC.__init__).parameters["margin"].default == 0.0


# ---- LVS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvs(tmp_path_factory) -> Modules:
    return _modules("lvs", tmp_path_factory)


def _lvs_args(**overrides) -> Namespace:
    values = dict(epsilon=0.65, epsilon2=0.4, tri_map=True, Neg=True, random_threshold=None, margin=0.0)
    values.update(overrides)
    return Namespace(**values)


def _lvs_models(mods: Modules, **overrides):
    """AVENet with its backbones replaced so that forward(img, aud[:, :, None, None]) sees the features."""
    args = _lvs_args(**overrides)
    original, patched = mods.original.AVENet(args), mods.patched.AVENet(args)
    for model in (original, patched):
        model.imgnet, model.audnet, model.avgpool = nn.Identity(), nn.Identity(), nn.Identity()
    return original.eval(), patched.eval(), args


def _no_cuda(self, *args, **kwargs):
    raise AssertionError("the patched LVS forward called Tensor.cuda()")


def _lvs_forward(model, img, aud, args, cuda_is_identity: bool, mp: pytest.MonkeyPatch):
    mp.setattr(torch.Tensor, "cuda", (lambda self, *a, **k: self) if cuda_is_identity else _no_cuda)
    try:
        return model(img, aud[:, :, None, None], args)
    finally:
        mp.undo()


def _lvs_parts(logits: torch.Tensor, b: int) -> Dict[str, torch.Tensor]:
    block = logits[:, 1:1 + b]
    eye = torch.eye(b, dtype=torch.bool)
    parts = {"positive": logits[:, 0], "negatives": block[~eye], "diagonal": block[eye]}
    if logits.shape[1] == b + 2:
        parts["background"] = logits[:, -1]
    return parts


LVS_VARIANTS = [dict(tri_map=True, Neg=True), dict(tri_map=False, Neg=True), dict(tri_map=True, Neg=False)]


@pytest.mark.parametrize("variant", LVS_VARIANTS, ids=["trimap-neg", "notrimap-neg", "trimap-noneg"])
@pytest.mark.parametrize("kind, dtype", INPUTS, ids=INPUT_IDS)
def test_lvs_logits_match_upstream_and_adapter(lvs, kind, dtype, variant):
    b = 10
    img, aud = FEATURES[kind](b, 64, 14, 14, dtype, 8)
    original, patched, args = _lvs_models(lvs, **variant)
    mp = pytest.MonkeyPatch()
    with torch.no_grad():
        up_a, up_logits, up_pos, up_neg = _lvs_forward(original, img, aud, args, True, mp)
        a, logits, pos, neg = _lvs_forward(patched, img, aud, args, False, mp)
    assert logits.shape == up_logits.shape == (b, 1 + b + (1 if variant["Neg"] else 0))
    for name, part in _lvs_parts(logits, b).items():
        rel_close(part, _lvs_parts(up_logits, b)[name], what=f"margin 0 logits, {name}")
    target = torch.zeros(b, dtype=torch.long)
    rel_close(F.cross_entropy(logits, target), F.cross_entropy(up_logits, target), what="margin 0 loss")
    for name, value, expected in (("A", a, up_a), ("Pos", pos, up_pos), ("Neg", neg, up_neg)):
        rel_close(value, expected, what=name)

    patched.margin = MARGIN
    with torch.no_grad():
        _, logits_m, _, _ = _lvs_forward(patched, img, aud, args, False, mp)
    adapter = lvs_adapter.lvs_logits(img, aud, margin=MARGIN, trimap=variant["tri_map"], hard_negative=variant["Neg"])
    for name, part in _lvs_parts(logits_m, b).items():
        rel_close(part, _lvs_parts(adapter, b)[name], what=f"margin -0.2 logits vs adapter, {name}")
    shifted = up_logits.clone()
    shifted[:, 0] -= MARGIN / 0.07  # eq. 3 on LVS's logits: sim1 - m (LVS model.py, AVENet.forward)
    for name, part in _lvs_parts(logits_m, b).items():
        rel_close(part, _lvs_parts(shifted, b)[name], what=f"margin -0.2 logits vs eq. 3, {name}")


def test_lvs_forward_with_batch_size_one(lvs):
    """test.py runs forward with batch_size=1; the patched forward (no .cuda()) gives upstream's outputs."""
    img, aud = trained_like_features(1, 64, 14, 14, 4, dtype=torch.float32)
    original, patched, args = _lvs_models(lvs)
    mp = pytest.MonkeyPatch()
    with torch.no_grad():
        up_a, up_logits, _, _ = _lvs_forward(original, img, aud, args, True, mp)
        a, logits, _, _ = _lvs_forward(patched, img, aud, args, False, mp)
    rel_close(a, up_a, what="A")
    assert logits.shape == up_logits.shape == (1, 3)
    for name, part in _lvs_parts(logits, 1).items():
        rel_close(part, _lvs_parts(up_logits, 1)[name], what=f"logits, {name}")


def test_lvs_constructor_reads_the_margin(lvs):
    _, patched, _ = _lvs_models(lvs, margin=-0.3)
    assert patched.margin == -0.3


def _write_clips(root: Path, ids: List[str]) -> None:
    import numpy as np
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "frames").mkdir(parents=True)
    (root / "audio").mkdir()
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(root / "frames" / f"{i}.jpg")
        # 2 kHz keeps the spectrogram of upstream's 10 s window small (257 x 83)
        sf.write(root / "audio" / f"{i}.wav", rng.uniform(-0.5, 0.5, 2000).astype(np.float32), 2000)


_RUN_TRAIN = (
    "import runpy, sys; from tests.test_patches import install_stubs; install_stubs(sys.modules); "
    "sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')"
)


def test_lvs_training_script_trains_and_checkpoints(lvs, tmp_path):
    """The patch's train.py runs on the upstream layout through the upstream dataloader, saves a
    checkpoint that test.py's nn.DataParallel model loads, and resumes from it."""
    ids = [f"clip{i}" for i in range(4)]
    data = tmp_path / "data"
    _write_clips(data, ids)
    (tmp_path / "train.txt").write_text("\n".join(ids) + "\n")
    argv = ["--data_path", f"{data}/", "--train_list", str(tmp_path / "train.txt"), "--image_size", "64",
            "--batch_size", "2", "--epochs", "1", "--workers", "0", "--margin", str(MARGIN),
            "--summaries_dir", str(tmp_path / "ckpt"), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    cmd = [sys.executable, "-c", _RUN_TRAIN, *argv]
    proc = subprocess.run(cmd, cwd=lvs.trees.patched, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(x) for x in re.findall(r"step \d+/2 loss (\S+)", proc.stdout)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), proc.stdout
    assert "4 training clips, margin -0.2" in proc.stdout

    ckpt = torch.load(tmp_path / "ckpt" / "lvs_latest.pth.tar", map_location="cpu")
    assert ckpt["epoch"] == 1 and ckpt["args"]["margin"] == MARGIN
    assert all(k.startswith("module.") for k in ckpt["model_state_dict"])
    model = nn.DataParallel(lvs.patched.AVENet(_lvs_args()))
    model.load_state_dict(ckpt["model_state_dict"])  # as test.py loads it (strict)
    torch.manual_seed(0)  # train.py's --seed default, before it builds the model
    initial = lvs.patched.AVENet(_lvs_args()).state_dict()
    assert not torch.equal(ckpt["model_state_dict"]["module.audnet.conv1_a.weight"], initial["audnet.conv1_a.weight"])

    again = subprocess.run(cmd, cwd=lvs.trees.patched, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "at epoch 1" in again.stdout and "step" not in again.stdout  # resumed, nothing left to train
