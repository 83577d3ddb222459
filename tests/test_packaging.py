"""The package as PyPI would see it (pyproject.toml, LICENSE, CHANGELOG.md, CITATION.cff, MANIFEST.in) and the
console scripts installed without the kit's extra. The built wheel and sdist themselves are checked by CI
(.ci/run: ``python -m build``, ``twine check --strict``, a fresh virtual environment with torch only)."""

from __future__ import annotations

import configparser
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import marginnce_loss
from marginnce_kit import cli

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = {"marginnce-train", "marginnce-evaluate", "marginnce-prepare", "marginnce-table5"}


def test_one_version_source() -> None:
    """The version is written once, in ``marginnce_loss.__version__``, and read from there by setuptools."""
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "marginnce_loss.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", marginnce_loss.__version__)
    # no metadata in setup.cfg (an sdist has one that setuptools writes, with its [egg_info] build tags only)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert set(cfg.sections()) <= {"egg_info"}


def test_wheel_installs_only_the_projects_own_packages() -> None:
    """``baselines`` (another PyPI project's top-level name) is not installed: only the core and the kit, each typed."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert set(include) == {"marginnce_loss", "marginnce_loss.*", "marginnce_kit", "marginnce_kit.*"}
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert data["marginnce_loss"] == ["py.typed"]
    assert set(data["marginnce_kit"]) == {"py.typed", "data/*.json"}
    assert list((REPO / "marginnce_kit" / "data").glob("*.json"))
    for package in ("marginnce_loss", "marginnce_kit"):
        assert (REPO / package / "py.typed").is_file()
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def test_license_is_the_apache_text() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    for section in ("1. Definitions.", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert section in text


def test_extras_and_console_scripts() -> None:
    """The README's install command (``.[test,baselines]``) keeps working: ``baselines`` is the ``kit`` extra under its
    earlier name; the test extra carries CI's packaging and docs tools; every console script names a callable."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["baselines"] == extras["kit"]
    assert "tensorboard" in extras["kit"]
    assert {"pytest", "build", "twine", "mkdocs-material", "mkdocstrings[python]"} <= set(extras["test"])
    # every import the kit extra provides is the one the console scripts' message names
    names = {re.split(r"[\[<>=]", r)[0].lower() for r in extras["kit"]}
    assert names == {"numpy", "torchvision", "pillow", "soundfile", "tqdm", "matplotlib", "av", "tensorboard", "scipy",
                     "pyyaml"}
    assert cli.KIT_IMPORTS == {"numpy", "torchvision", "PIL", "soundfile", "tqdm", "matplotlib", "av", "tensorboard",
                               "scipy", "yaml"}
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == SCRIPTS
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))
        assert callable(importlib.import_module(f"marginnce_kit.{name.replace('_entry', '')}").main)


@pytest.mark.parametrize("missing", [["numpy"], ["PIL", "numpy", "yaml"]])
def test_console_script_without_the_kit_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture, missing: list[str]) -> None:
    """Installed with torch only, a console script prints ONE line naming the extra, status 1, no traceback, before
    importing anything (so neither torch's own warning about numpy nor the tool's imports run)."""
    real = cli.find_spec
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name in missing else real(name))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: pytest.fail(f"imported {name}"))
    with pytest.raises(SystemExit) as exit_:
        cli.train_entry()
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"marginnce-train: error: the kit's dependencies are not installed (missing: {', '.join(missing)}); "
                   "install them with: pip install 'marginnce-loss[kit]'\n")


def test_console_script_import_error_of_a_kit_dependency(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A kit dependency found but failing to import a submodule of a missing package is the same one line."""
    def absent(name: str) -> None:
        raise ModuleNotFoundError("No module named 'scipy.special'", name="scipy.special")

    monkeypatch.setattr(cli.importlib, "import_module", absent)
    with pytest.raises(SystemExit) as exit_:
        cli.table5_entry()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == ("marginnce-table5: error: the kit's dependencies are not installed (missing: "
                                       "scipy); install them with: pip install 'marginnce-loss[kit]'\n")


def test_console_script_keeps_the_traceback_of_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module that is not one of the kit's dependencies is a bug: it propagates."""
    def absent(name: str) -> None:
        raise ModuleNotFoundError("No module named 'marginnce_kit.nothing'", name="marginnce_kit.nothing")

    monkeypatch.setattr(cli.importlib, "import_module", absent)
    with pytest.raises(ModuleNotFoundError, match="marginnce_kit.nothing"):
        cli.evaluate_entry()


@pytest.mark.parametrize("module", ["train", "evaluate", "prepare", "table5"])
def test_every_command_has_version(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"marginnce_kit.{module}", "--version"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"python -m marginnce_kit.{module} (marginnce-loss {marginnce_loss.__version__})\n"


def test_sdist_carries_the_test_suite() -> None:
    """MANIFEST.in grafts what ``pytest`` needs from an unpacked sdist (CI collects and runs it)."""
    lines = (REPO / "MANIFEST.in").read_text().splitlines()
    for folder in ("tests", "benchmarks", "patches", "baselines", "docs"):
        assert f"graft {folder}" in lines
    for helper in ("__init__.py", "conftest.py", "fixtures.py", "oracles.py"):
        assert (REPO / "tests" / helper).is_file()


def test_changelog_and_citation() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in changelog and "Semantic Versioning" in changelog
    assert "`marginnce_loss.__all__`" in changelog
    assert "\n## [Unreleased]\n" in changelog
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == marginnce_loss.__version__
    paper = cff["preferred-citation"]
    assert paper["title"] == "MarginNCE: Robust Sound Localization with a Negative Margin" and paper["year"] == 2023
    assert [a["family-names"] for a in paper["authors"]] == ["Park", "Senocak", "Chung"]
