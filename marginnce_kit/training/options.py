"""The command-line side of :class:`~marginnce_kit.training.config.TrainConfig`: options derived from its
fields (flag ``--<name-with-dashes>``, the field's default, ``choices`` / ``type`` / negated ``--no-...`` flags
from the field metadata), the config of parsed arguments, the path checks of the given data folders and the
one-line form of data errors. ``train``, ``evaluate`` and ``table5`` share their options through here."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from ..cli import UsageError, one_line
from ..data.datasets import DataError
from ..layout import AUDIO_DIR, FRAMES_DIR
from .config import DATA_FIELDS, VAL_FIELDS, TrainConfig

__all__ = ["add_config_arguments", "add_data_arguments", "add_field_argument", "config_argv", "config_from_args",
           "check_paths", "data_error"]

ArgumentTarget = argparse.ArgumentParser | argparse._ArgumentGroup


def _flag(f: Field) -> str:
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def _add(p: ArgumentTarget, f: Field, **override: Any) -> None:
    """The option of field ``f`` (``override``: argparse keywords replacing the derived ones)."""
    meta, default = f.metadata, f.default
    assert default is not MISSING
    kw: dict[str, Any] = {"help": meta["help"]}
    if f.type in ("bool", bool):
        kw.update(dest=f.name, action="store_false" if default else "store_true")
    else:
        kw.update(default=default)
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        kw["type"] = meta.get("type", {"int": int, "float": float}.get(str(f.type), str))
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
    kw.update(override)
    p.add_argument(_flag(f), **kw)


def _fields() -> dict[str, Field]:
    return {f.name: f for f in fields(TrainConfig)}


def add_field_argument(p: ArgumentTarget, name: str, **override: Any) -> None:
    """The option of :class:`TrainConfig` field ``name`` with its help, type and choices (``override``:
    argparse keywords replacing the derived ones, e.g. ``default=None`` for an optional override).

    Raises:
        KeyError: ``name`` is not a field of :class:`TrainConfig`.
    """
    _add(p, _fields()[name], **override)


def add_data_arguments(p: ArgumentTarget, train: bool = True, required: bool = True, val: bool = False) -> None:
    """The data options (``--train-root`` ... ``--annotation-format``; with ``val`` also ``--val-root``,
    ``--val-list``, ``--val-annotations``). ``train=False`` (evaluation): no train split, and
    ``--annotation-format`` defaults to ``None`` (the checkpoint's). ``required=False``: the train split's
    options are optional too (default ``""``; the studies' real-data switch)."""
    fs = _fields()
    for name in DATA_FIELDS:
        if name.startswith("train_"):
            if train:
                _add(p, fs[name], **(dict(required=True, default=None) if required else {}))
        elif name == "annotation_format" and not train:
            _add(p, fs[name], default=None, help=fs[name].metadata["help"] + " (None: the checkpoint's)")
        else:
            _add(p, fs[name])
    if val:
        for name in VAL_FIELDS:
            _add(p, fs[name])


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, in field order (the data options via
    :func:`add_data_arguments`), with the field's default and help."""
    for name, f in _fields().items():
        if name in DATA_FIELDS or name in VAL_FIELDS:
            if name == DATA_FIELDS[0]:
                add_data_arguments(p, val=True)
            continue
        _add(p, f)


def config_argv(config: TrainConfig) -> list[str]:
    """The command line of ``config``: the options (as :func:`add_config_arguments` derives them) of
    every field that differs from its default, plus ``--train-root`` / ``--train-list`` (required).
    ``config_from_args(parse_args(config_argv(c) + ["--out", ...]))`` equals ``c``."""
    argv: list[str] = []
    for f in fields(config):
        v = getattr(config, f.name)
        if v == f.default and f.name not in ("train_root", "train_list"):
            continue
        if str(f.type) == "bool":
            argv.append(_flag(f))  # a switch: present means "not the default"
        else:
            argv += [_flag(f), str(v)]
    return argv


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (each field from the attribute of its name).

    Raises:
        ConfigError: the values do not make a valid config (one line under the CLI).
    """
    return TrainConfig(**{name: getattr(args, name) for name in _fields()})


def check_paths(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for a data path given on the command line that does not exist
    (relative paths are read from the working directory)."""
    data_fix = "pass a folder written by `python -m marginnce_kit.prepare --out ROOT` (with frames/ and audio/)"
    for name, kind in (("train_root", "root"), ("train_list", "file"), ("test_root", "root"),
                       ("test_list", "file"), ("annotations", "any"), ("val_root", "root"), ("val_list", "file"),
                       ("val_annotations", "any")):
        value = getattr(args, name, "")
        if not value:
            continue
        path, option = Path(value), "--" + name.replace("_", "-")
        where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        if not path.exists():
            raise UsageError(f"{option}: no such {'folder' if kind == 'root' else 'file'} {value!r}{where}",
                             data_fix if kind == "root" else f"check the path given to {option}")
        if kind == "file" and not path.is_file():
            raise UsageError(f"{option}: expected a file, got the folder {value!r}",
                             f"check the path given to {option}")
        if kind == "root":
            missing = [d for d in (FRAMES_DIR, AUDIO_DIR) if not (path / d).is_dir()]
            if missing:
                raise UsageError(f"{option}: {value!r} has no {' and no '.join(d + '/' for d in missing)} folder",
                                 data_fix)


def data_error(e: DataError) -> UsageError:
    """The one-line form of a :class:`marginnce_kit.data.DataError` (too many broken clips), with the fix."""
    return UsageError(one_line(str(e)),
                      "drop these ids from the list (`python -m marginnce_kit.prepare --verify ROOT --ids LIST "
                      "--write-clean CLEAN` writes the list without them) or raise --max-failures")
