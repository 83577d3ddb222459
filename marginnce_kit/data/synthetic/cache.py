"""The hash-keyed cache of generated data sets (``$MARGINNCE_CACHE/synthetic/<config hash>``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import PRESETS, EmbeddedConfig, config_hash
from .writer import generate


def default_cache_root() -> Path:
    """``$MARGINNCE_CACHE/synthetic`` if the variable is set, else ``~/.cache/marginnce-loss/synthetic``."""
    base = os.environ.get("MARGINNCE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "marginnce-loss") / "synthetic"


def ensure_dataset(
    root: str | Path | None = None,
    preset: str = "default",
    config: EmbeddedConfig | None = None,
    *,
    workers: int | None = None,
    **overrides: Any,
) -> Path:
    """Path of the cached dataset ``<root>/<config_hash>``, generated first if absent.

    The config is ``config`` if given, else ``PRESETS[preset]``, with ``overrides``
    (field names of ``EmbeddedConfig``) applied. ``root`` defaults to
    ``default_cache_root()``. Returns at once when the complete dataset is there.
    """
    if config is None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        config = PRESETS[preset]
    elif not isinstance(config, EmbeddedConfig):
        raise TypeError(f"config must be an EmbeddedConfig or None, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    base = default_cache_root() if root is None else Path(root)
    return generate(base / config_hash(config), config, workers=workers)
