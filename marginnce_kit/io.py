"""Atomic file writes: the one home of "write beside, then rename over".

A writer fills ``<folder>/.<name>.<pid>.tmp`` and :func:`os.replace` moves it over ``path`` (atomic on
POSIX within one filesystem), so a reader (or a run killed mid-write) only ever sees the old file or
the new one, never a partial one. The temporary file is removed when the writer fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["temp_path", "atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save"]


def temp_path(path: Path, suffix: str = "") -> Path:
    """The temporary name beside ``path``: ``.<name>.<pid>.tmp<suffix>`` (hidden, per process;
    ``suffix`` keeps an extension a writer dispatches on, e.g. ``".png"`` for matplotlib)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], suffix: str = "") -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it over ``path``.

    Raises:
        Whatever ``write`` raises (the temporary file is removed first); ``OSError`` from the rename.
    """
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as indented JSON (and a final newline) to ``path`` atomically."""
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a checkpoint is never seen half-written)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))
