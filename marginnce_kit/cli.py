"""What the kit's command-line tools share: expected user errors as one line, help with defaults.

A command's ``main(argv) -> int`` raises :class:`UsageError` for an error the user can fix (a
missing file, a flag that does not fit the data or the machine, broken clips past the threshold);
:func:`run_main` prints it as ONE line on stderr, ``<prog>: error: <problem>; <fix>``, and exits
with status 1. Any other exception is a bug and keeps its traceback. ::

    from .cli import UsageError, run_main

    def main(argv=None) -> int:
        ...
        raise UsageError("--batch-size 128 exceeds the 16 clips of the train set", fix="pass --batch-size <= 16")

    if __name__ == "__main__":
        run_main(main)

The console scripts of the package (``marginnce-train``, ``marginnce-evaluate``,
``marginnce-prepare``, ``marginnce-table5``; see ``pyproject.toml``) are the ``*_entry`` functions below:
the same ``main`` under :func:`run_main`, runnable from any working directory once the package is
installed. ``python -m baselines.<tool>`` keeps working from a checkout (the old name). Installed without
the ``kit`` extra (torch only), a console script says so in one line, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

__all__ = ["UsageError", "HelpFormatter", "one_line", "run_main", "program_name", "make_parser", "command_name",
           "add_version", "KIT_IMPORTS",
           "train_entry", "evaluate_entry", "prepare_entry", "table5_entry"]


class UsageError(Exception):
    """An error the user can fix: shown by :func:`run_main` as one line, exit status 1, no traceback.

    Args:
        problem: what is wrong, naming the argument or file and the value received.
        fix: what to do about it (appended after ``"; "``), or ``None``.

    Subclasses may also derive from a builtin (``ValueError``, ``FileNotFoundError``) so that library
    callers catching the builtin keep working.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}; {fix}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the description's layout (usage examples) and shows every option's default --
    except for on/off switches, whose default is "off" by construction: ``--no-amp (default: True)``
    would read as if the switch were on."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help or ""
        return super()._get_help_string(action) or ""


def one_line(text: str) -> str:
    """``text`` on one line: its lines stripped and joined with ``"; "`` (multi-line reports such as
    :class:`marginnce_kit.data.DataError`'s list of clips)."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(parts)


def program_name() -> str:
    """The command as it was invoked: the console script's name (``marginnce-table5``), ``python -m <module>`` for a
    kit module run with ``-m`` (``python -m marginnce_kit.table5``), else the script's file name."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else "marginnce_kit"
    parts = list(Path(path).with_suffix("").parts)
    if path.endswith(".py") and "marginnce_kit" in parts:
        module = parts[len(parts) - 1 - parts[::-1].index("marginnce_kit"):]
        if module[-1] in ("__main__", "__init__"):
            module = module[:-1]
        return "python -m " + ".".join(module)
    name = os.path.basename(path)
    return name[:-3] if name.endswith(".py") else name


def make_parser(module: str, summary: str, details: str = "") -> argparse.ArgumentParser:
    """The parser of a kit command: usage first, naming the command as it was invoked (``marginnce-train`` from
    the console script, ``python -m marginnce_kit.train`` otherwise), a one-line ``summary``, the options with
    their defaults, then ``details`` (the module's longer documentation), and ``--version``."""
    p = argparse.ArgumentParser(prog=command_name(module), description=summary, epilog=details or None,
                                formatter_class=HelpFormatter)
    add_version(p)
    return p


def command_name(module: str) -> str:
    """The name ``--help`` and errors show for the kit's ``module``: the console script's name when invoked as one
    (``marginnce-prepare``), else ``python -m <module>`` (so the alias ``baselines.*`` reads as the kit)."""
    name = program_name()
    return name if name.startswith("marginnce-") else f"python -m {module}"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``<prog> (marginnce-loss <version>)`` and exits with status 0."""
    from marginnce_loss import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (marginnce-loss {__version__})")


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
             prog: str | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit with its status; a :class:`UsageError` becomes one line on stderr
    (``<prog>: error: ...``; under ``torchrun`` prefixed with the rank) and exit status 1.

    ``SystemExit`` (argparse's own usage errors, status 2) passes through; every other exception
    propagates with its traceback (a bug, not a usage error).
    """
    try:
        status = main(argv)
    except UsageError as e:
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
        where = f"[rank {rank}] " if rank is not None else ""
        print(f"{where}{prog or program_name()}: error: {one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0 if status is None else status)


# what the ``kit`` extra installs, by import name (pyproject.toml's [project.optional-dependencies] kit)
KIT_IMPORTS = frozenset({"numpy", "torchvision", "PIL", "soundfile", "tqdm", "matplotlib", "av", "tensorboard",
                         "scipy", "yaml"})


def _entry(module: str) -> NoReturn:
    """Run the kit's ``module`` as the console script ``marginnce-<module>``. Without the ``kit`` extra (torch only),
    one line on stderr names the missing packages and the extra, exit status 1: checked before anything is
    imported (torch itself warns on import without numpy)."""
    prog = f"marginnce-{module}"
    missing = sorted(name for name in KIT_IMPORTS if find_spec(name) is None)
    if missing:
        _no_kit(prog, missing)
    try:
        tool = importlib.import_module(f"marginnce_kit.{module}")
    except ModuleNotFoundError as e:
        name = (e.name or "").split(".")[0]
        if name not in KIT_IMPORTS:
            raise  # not one of the kit's dependencies: a bug, keep the traceback
        _no_kit(prog, [name])
    run_main(tool.main, prog=prog)


def _no_kit(prog: str, missing: Sequence[str]) -> NoReturn:
    print(f"{prog}: error: the kit's dependencies are not installed (missing: {', '.join(missing)}); "
          "install them with: pip install 'marginnce-loss[kit]'", file=sys.stderr, flush=True)
    sys.exit(1)


def train_entry() -> NoReturn:
    """Console script ``marginnce-train`` = ``python -m marginnce_kit.train``."""
    _entry("train")


def evaluate_entry() -> NoReturn:
    """Console script ``marginnce-evaluate`` = ``python -m marginnce_kit.evaluate``."""
    _entry("evaluate")


def prepare_entry() -> NoReturn:
    """Console script ``marginnce-prepare`` = ``python -m marginnce_kit.prepare``."""
    _entry("prepare")


def table5_entry() -> NoReturn:
    """Console script ``marginnce-table5`` = ``python -m marginnce_kit.table5``."""
    _entry("table5")
