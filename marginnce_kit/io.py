"""The kit's file IO: the one home of reading text files, and of "write beside, then rename over".

Reading (:func:`read_text`, :func:`read_json`, :func:`read_jsonl`, :func:`read_csv_rows`): every list, CSV
and JSON file the kit reads goes through these, so each accepts what editors and spreadsheets write -- a
UTF-8 byte-order mark (Excel's "CSV UTF-8", Windows Notepad) and CRLF or CR line ends -- and a file that is
not UTF-8 text or not valid JSON raises :class:`TextFileError`: one line naming the file, where it goes
wrong and the fix (the command-line tools print it without a traceback; library callers may catch it as
``ValueError``).

Writing:

A writer fills ``<folder>/.<name>.<pid>.tmp`` and :func:`os.replace` moves it over ``path`` (atomic on
POSIX within one filesystem), so a reader (or a run killed mid-write) only ever sees the old file or
the new one, never a partial one. The temporary file is removed when the writer fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli import UsageError

__all__ = ["TextFileError", "read_text", "read_json", "read_jsonl", "read_csv_rows",
           "TorchFileError", "load_weights_only", "temp_path", "atomic_write", "atomic_write_text", "atomic_write_json",
           "atomic_save"]

_TEXT_FIX = "save it as UTF-8 text (an editor's or spreadsheet's 'UTF-8' encoding), or pass the right file"
_JSON_FIX = "fix the JSON (a validator such as `python -m json.tool FILE` points at the spot), or pass the right file"


class TextFileError(UsageError, ValueError):
    """A file the kit reads that is not UTF-8 text, or not valid JSON: one line naming the file, the place
    (byte offset, or line and column) and the fix. A ``ValueError`` to library callers."""


def _label(path: Path, what: str) -> str:
    return f"{what} {str(path)!r}" if what else repr(str(path))


def read_text(path: str | os.PathLike[str], what: str = "") -> str:
    """The text of ``path``: UTF-8, a leading byte-order mark dropped, CRLF and CR line ends read as ``"\\n"``
    (Python's universal newlines).

    Args:
        path: the file.
        what: what the file is, for the error (``"ids file"``, ``"--config"``); ``""`` names the path only.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as :meth:`pathlib.Path.read_bytes`.
        TextFileError: the bytes are not UTF-8 (the message names the first bad byte's offset).
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise TextFileError(f"{_label(path, what)}: UTF-16 text (its byte-order mark), not UTF-8",
                                _TEXT_FIX) from None
        raise TextFileError(f"{_label(path, what)}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}: "
                            f"{e.reason})", _TEXT_FIX) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _json_error(path: Path, what: str, e: json.JSONDecodeError, line: int | None = None) -> TextFileError:
    where = f"line {line}" if line is not None else f"line {e.lineno} column {e.colno}"
    return TextFileError(f"{_label(path, what)}: not valid JSON ({e.msg} at {where})", _JSON_FIX)


def read_json(path: str | os.PathLike[str], what: str = "") -> Any:
    """The JSON value in ``path``, read as :func:`read_text` reads text.

    Raises:
        FileNotFoundError: no such file.
        TextFileError: not UTF-8 text, or not valid JSON (the message names the line and column).
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(path, what, e) from None


def read_jsonl(path: str | os.PathLike[str], what: str = "") -> list[Any]:
    """The values of a JSON-lines file (one JSON value a line; blank lines skipped), in file order.

    Raises:
        FileNotFoundError: no such file.
        TextFileError: not UTF-8 text, or a line that is not valid JSON (the message names the line).
    """
    path = Path(path)
    out = []
    for lineno, line in enumerate(read_text(path, what).split("\n"), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise _json_error(path, what, e, lineno) from None
    return out


def read_csv_rows(path: str | os.PathLike[str], what: str = "") -> list[list[str]]:
    """The rows of a CSV file (:mod:`csv`'s default dialect; a one-column list is a CSV too), in file order;
    a blank line is an empty row.

    Raises:
        FileNotFoundError: no such file.
        TextFileError: not UTF-8 text, or not CSV (e.g. an unterminated quoted field).
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise TextFileError(f"{_label(path, what)}: not valid CSV ({e})", "fix the file, or pass the right file") \
            from None


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


class TorchFileError(UsageError, ValueError):
    """A file :func:`load_weights_only` cannot read; :attr:`reason` says which of two causes:

    - ``"cut short"``: the file is cut short or not a checkpoint at all (an interrupted copy or download, an
      empty file, a text or zip file of another kind: ``torch.load`` fails before anything is unpickled);
    - ``"unsafe"``: a real torch file holding objects other than tensors and plain containers (a whole
      pickled model, a custom class), which ``weights_only=True`` refuses to run.
    """

    def __init__(self, message: str, fix: str, reason: str) -> None:
        super().__init__(message, fix)
        self.reason = reason


def load_weights_only(path: str | os.PathLike[str], what: str, map_location: str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file it cannot read raises :class:`TorchFileError` naming
    ``what`` (e.g. ``"checkpoint"``), the path and the cause (cut short or not a checkpoint / unsafe).

    A refusal is told apart by torch's own wording: "Weights only load failed" naming an "Unsupported
    global" (a class the file needs to unpickle; torch >= 2.4). Every other failure -- ``RuntimeError``
    from the zip reader ("failed finding central directory"), ``EOFError``, "Invalid magic number", or an
    "Unsupported operand" (bytes that are not a pickle at all) -- means the bytes are not a complete
    torch file.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- classified below; the original is chained
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        refused = "Weights only load failed" in text and "Unsupported global" in text
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise TorchFileError(
                f"{what} {str(path)!r}: holds objects other than tensors, which weights_only=True refuses to "
                f"load (it could run code)",
                "save plain state dicts (torch.save(model.state_dict(), PATH)); load a file you trust yourself "
                "with torch.load(PATH, weights_only=False) and re-save its state dict", "unsafe") from e
        raise TorchFileError(
            f"{what} {str(path)!r}: file is cut short or not a checkpoint ({os.path.getsize(path)} bytes; "
            f"{type(e).__name__}: {first})",
            "copy or download the file again, or pass the right file", "cut short") from e
