"""Lint and type checks as tests, so that CI runs them: ``ruff check .`` and ``mypy`` (marginnce_loss, marginnce_kit, benchmarks)
(configured in pyproject.toml; both are in the ``test`` extras). Skipped, saying so, when not installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .conftest import REPO


def _run(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{module} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def test_ruff():
    _run("ruff", "check", ".")


def test_mypy():
    _run("mypy")  # the files pyproject.toml names: marginnce_loss, marginnce_kit, benchmarks
