"""The upstream patches in ``patches/``, read as files (always on, no upstream checkout needed).

Every patch is a comment header followed by a well-formed unified diff (read with ``unidiff``, nothing
left unread, the same line counts as ``git apply --numstat`` reading the whole file, header included);
the header names each compatibility fix the patch carries; the diff touches exactly the files it is
meant to, plugs the margin in through package names that exist, adds ``--margin`` to the scripts, and
replaces the deprecated / refused library calls; ``patches/README.md`` names every patch, pin, fix and
the tau = 0.03 caution.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess

import pytest
from unidiff import LINE_TYPE_ADDED, LINE_TYPE_CONTEXT, LINE_TYPE_REMOVED, UnidiffParseError

from .patch_upstreams import (
    PATCHES,
    UPSTREAMS,
    added,
    parse_patch,
    patch_text,
    patched_file,
    read_patch,
    removed,
    split_header,
)

EZVSL_FAMILY = ["ezvsl", "slavc", "fnac"]


@pytest.mark.parametrize(
    "text",
    [
        "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n+C\n",  # one + too many
        "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n a\n-b\n+B\nstray\n",  # a line after the hunk
        "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n",  # truncated hunk
        "--- a/m.py\n+++ b/m.py\n@@ -1,1 +1,1 @\n-a\n+b\n",  # malformed hunk header
        "--- a/m.py\n+++ b/m.py\n",  # no hunk
        "",
    ],
    ids=["longer", "stray", "truncated", "bad-header", "no-hunk", "empty"],
)
def test_malformed_patches_are_refused(text):
    with pytest.raises(UnidiffParseError):
        parse_patch(text)


def test_split_header():
    diff = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b\n"
    assert split_header("note\n\n" + diff) == ("note\n\n", diff)
    assert split_header(diff) == ("", diff)
    assert split_header("no diff here\n") == ("no diff here\n", "")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_reads_the_same_with_git(key):
    """``git apply --numstat`` on the whole file (it skips the header; no repository needed) counts
    the same added/removed lines per file as unidiff on the diff after the header."""
    proc = subprocess.run(["git", "apply", "--numstat", str(UPSTREAMS[key].patch)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    by_git = [tuple(row.split("\t")) for row in proc.stdout.splitlines()]
    assert by_git == [(str(f.added), str(f.removed), f.path) for f in read_patch(key)]


# what git apply / patch / unidiff would read as diff syntax if a header line began with it
_DIFF_SYNTAX = re.compile(r"^(diff |--- |\+\+\+ |@@ |index |Index:|new file mode|deleted file mode|similarity |rename |"
                          r"old mode|new mode|Binary files|\*\*\* |GIT binary patch|[-+ ]$)")


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_header_names_its_pin_and_fixes(key):
    up = UPSTREAMS[key]
    header, diff = split_header(patch_text(key))
    assert diff, f"{key}.patch: no 'diff --git' line"
    lines = header.splitlines()
    assert len(lines) >= 5, f"{key}.patch: expected a header naming the changes and fixes, got {header!r}"
    assert [line for line in lines if _DIFF_SYNTAX.match(line)] == [], f"{key}.patch: header line reads as diff syntax"
    flat = " ".join(header.split())
    assert up.pin in flat and up.repository in flat and "git apply -R" in flat
    for word in up.fixes:
        assert word in flat, f"{key}.patch header does not name the fix {word!r}"


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_touches_exactly_its_files(key):
    up = UPSTREAMS[key]
    files = read_patch(key)
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths)), f"{up.patch.name}: a file appears twice: {paths}"
    assert set(paths) == up.files
    assert {f.path for f in files if f.is_added_file} == up.new_files
    assert not any(f.is_removed_file for f in files), f"{up.patch.name} deletes a file"


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_hunks_have_short_context(key):
    """Made with ``git diff -U2``: at most two context lines before and after each change."""
    for f in read_patch(key):
        for h in f:
            tags = [line.line_type for line in h if line.line_type in (LINE_TYPE_ADDED, LINE_TYPE_REMOVED, LINE_TYPE_CONTEXT)]
            lead = len(tags) - len("".join(tags).lstrip(" "))
            trail = len(tags) - len("".join(tags).rstrip(" "))
            assert lead <= 2 and trail <= 2, f"{key}.patch {f.path} @@ -{h.source_start}: context {lead}/{trail} lines"


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_imports_names_that_exist_in_the_package(key):
    up = UPSTREAMS[key]
    model = patched_file(key, "model.py")
    import_line, module, attribute = up.imports
    assert import_line in added(model)
    assert callable(getattr(importlib.import_module(module), attribute))
    assert sum(line.strip().startswith("self.margin = ") for line in added(model)) == 1


@pytest.mark.parametrize("key", sorted(UPSTREAMS))
def test_patch_adds_a_margin_option_to_the_scripts(key):
    files = {f.path: f for f in read_patch(key)}
    for script in UPSTREAMS[key].scripts:
        options = [line for line in added(files[script]) if "add_argument('--margin'" in line]
        assert len(options) == 1, f"{key}.patch {script}: expected one --margin option, got {options}"
        assert "default=0.0" in options[0] and "type=float" in options[0]


@pytest.mark.parametrize("key", EZVSL_FAMILY)
def test_tau_003_training_help_states_the_logit_shift(key):
    """At these repositories' tau = 0.03 the paper's m = -0.2 is a 6.7-logit shift: --help says so."""
    option = next(line for line in added(patched_file(key, "train.py")) if "add_argument('--margin'" in line)
    assert "+6.7" in option and "m=-0.086" in option and "tau 0.07" in option


@pytest.mark.parametrize("key", EZVSL_FAMILY)
def test_ezvsl_family_scripts_pass_the_margin_to_the_model(key):
    files = {f.path: f for f in read_patch(key)}
    for script in ("train.py", "test.py"):
        assert sum("margin=args.margin)" in line for line in added(files[script])) == 1, script


@pytest.mark.parametrize("key", EZVSL_FAMILY)
def test_imagenet_weights_use_the_weights_enum(key):
    """``pretrained=True`` (deprecated since torchvision 0.13) becomes the weights enum, read from
    torchvision's cache (``$TORCH_HOME``), in model.py and in test.py's object-saliency model."""
    for path in ("model.py", "test.py"):
        f = patched_file(key, path)
        assert any("resnet18(pretrained=True)" in line for line in removed(f)), path
        assert sum("resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)" in line for line in added(f)) == 1, path
        assert any("ResNet18_Weights" in line and "import" in line for line in added(f)), path
        assert not any("pretrained=" in line.split("#")[0] for line in added(f)), path


@pytest.mark.parametrize("key", EZVSL_FAMILY)
def test_checkpoint_loads_accept_numpy_scalars(key):
    """Every checkpoint load of train.py (resume) and test.py passes ``weights_only=False``."""
    for path in ("train.py", "test.py"):
        f = patched_file(key, path)
        loads = [line for line in added(f) if "torch.load(" in line]
        assert len(loads) == 1 and "weights_only=False" in loads[0], (path, loads)
        assert len([line for line in removed(f) if "torch.load(" in line]) == 1, path


@pytest.mark.parametrize("key", ["ezvsl", "slavc"])
def test_audio_io_takes_pyav_lists_and_flushes(key):
    f = patched_file(key, "audio_io.py")
    assert "                chunks.append((chunk_start_time, resampler.resample(frame).to_ndarray()))" in removed(f)
    new = "\n".join(added(f))
    assert "isinstance(frames, list)" in new and "resampler.resample(None)" in new
    assert all(line.endswith("\r\n") for hunk in f for line in (str(x) for x in hunk) if line.strip()), \
        "audio_io.py has CRLF line ends upstream; the patch must keep them"


def test_ezvsl_patch_replaces_the_upstream_loss():
    model = patched_file("ezvsl", "model.py")
    assert any("F.cross_entropy(logits, labels)" in line for line in removed(model))
    assert "        return margin_max_xmil_loss(img, aud, self.tau, self.margin)" in added(model)


def test_slavc_patch_replaces_the_upstream_loss():
    model = patched_file("slavc", "model.py")
    assert "        loss = F.cross_entropy(a2i, labels) + F.cross_entropy(i2a, labels)" in removed(model)
    assert ("        loss = margin_cross_entropy(a2i, self.margin, self.tau) + "
            "margin_cross_entropy(i2a, self.margin, self.tau)") in added(model)


@pytest.mark.parametrize("path", ["model.py", "test.py"])
def test_lvs_patch_drops_the_hard_coded_cuda_calls(path):
    f = patched_file("lvs", path)
    assert any(".cuda()" in line for line in removed(f))
    assert not any(".cuda(" in line for line in added(f))


def test_lvs_loader_joins_paths():
    f = patched_file("lvs", "datasets/dataloader.py")
    assert [line.strip() for line in removed(f)] == ["self.audio_path = args.data_path + 'audio/'",
                                                      "self.video_path = args.data_path + 'frames/'"]
    assert sum("os.path.join(args.data_path, " in line for line in added(f)) == 2


def test_lvs_training_script_compiles():
    source = "\n".join(added(patched_file("lvs", "train.py"))) + "\n"
    compile(source, "train.py", "exec")
    assert "F.cross_entropy(logits, target)" in source and ".cuda(" not in source
    assert "self.skipped" in source


def test_readme_names_every_patch_pin_and_caution():
    readme = (PATCHES / "README.md").read_text()
    for up in UPSTREAMS.values():
        assert up.patch.name in readme and up.pin in readme and up.repository in readme, up.key
    flat = " ".join(readme.split())
    for words in ("git apply -R", "--check", "--frame-format png", "TORCH_HOME", "m = -0.086", "weights_only=False",
                  "PyAV", "patches/parity.txt"):
        assert words in flat, words
