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
from ..data.annotations import load_id_list
from ..data.datasets import DataError
from ..io import read_json, read_text
from ..layout import AUDIO_DIR, FRAMES_DIR
from .config import DATA_FIELDS, VAL_FIELDS, TrainConfig

__all__ = ["add_config_arguments", "add_data_arguments", "add_field_argument", "config_argv", "config_from_args",
           "check_paths", "data_error", "read_config_file", "config_file_values"]

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


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (``.yaml`` / ``.yml`` need PyYAML, in the kit extra); a UTF-8 byte-order
    mark is accepted.

    Raises:
        UsageError: no such file, or one that is not a JSON / YAML mapping (one line naming the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: no such file {str(path)!r}", "pass a run's config.json or a YAML file")
    if path.suffix.lower() in (".yaml", ".yml"):
        text = read_text(path, "--config")
        try:
            import yaml
        except ImportError:
            raise UsageError(f"--config {str(path)!r}: reading YAML needs PyYAML",
                             "pip install pyyaml (in the kit extra), or pass JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"--config {str(path)!r}: not valid YAML ({one_line(str(e))})", "fix the file") from None
    else:
        data = read_json(path, "--config")
    if not isinstance(data, dict):
        raise UsageError(f"--config {str(path)!r}: expected a mapping of settings, got {type(data).__name__}",
                         "pass a run's config.json or a YAML mapping of TrainConfig fields")
    return data


def config_file_values(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The :class:`TrainConfig` fields set in a config file (a run's ``config.json``: its ``provenance`` record is
    not a setting).

    Raises:
        UsageError: an unknown field, naming the fields and the version that wrote the file (its provenance).
    """
    from .config import RECORD_KEYS

    data = read_config_file(path)
    known = set(_fields())
    unknown = sorted(set(data) - known - set(RECORD_KEYS))
    if unknown:
        wrote = (data.get("provenance") or {}).get("marginnce_loss") or "an unknown version"
        raise UsageError(f"--config {str(path)!r}: unknown fields {unknown} (written by {wrote}; this is "
                         f"{_version()})", "drop those fields, or use the version that wrote the file")
    return {k: v for k, v in data.items() if k in known}


def _version() -> str:
    from marginnce_loss import __version__

    return f"marginnce-loss {__version__}"


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


def add_config_arguments(p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """One option per :class:`TrainConfig` field, in field order (the data options via
    :func:`add_data_arguments`), with the field's default and help. ``defaults`` (a config file's values) replace
    the fields' defaults, and a train split they give is no longer required on the command line."""
    defaults = defaults or {}
    given = all(defaults.get(k) for k in ("train_root", "train_list"))
    add_data_arguments(p, required=not given, val=True)
    for name, f in _fields().items():
        if name not in DATA_FIELDS and name not in VAL_FIELDS:
            _add(p, f)
    if defaults:
        p.set_defaults(**defaults)


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
    (relative paths are read from the working directory), or for a clip list that does not read as one
    (:func:`~marginnce_kit.data.annotations.load_id_list`: a clip listed twice, which would be its own
    negative whenever both copies share a batch; a file that is not UTF-8 text)."""
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
        if kind == "file":
            try:
                load_id_list(path)
            except UsageError:  # not UTF-8 text (TextFileError): one line naming the file and the fix already
                raise
            except ValueError as e:  # a clip id listed twice
                raise UsageError(f"{option}: {one_line(str(e))}",
                                 "list each clip once (remove the repeated line)") from e
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
