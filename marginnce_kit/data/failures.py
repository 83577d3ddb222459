"""Failure accounting of the data sets: a clip that cannot be used is counted and reported, never replaced.

``FailedSample(id, reason)`` travels through the DataLoader in place of a broken item;
``DataFailureTracker`` records the distinct failed clips of a split and raises ``DataError`` past
``max_failures`` (a fraction of the split or a count).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Exceptions that mean "this clip's data is broken" (decoding errors, wrong sample rate, ...).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, EOFError)




class DataError(RuntimeError):
    """Too many clips of a split are missing or broken."""


@dataclass(frozen=True)
class FailedSample:
    """Sentinel returned by ``AudioVisualDataset.__getitem__`` for a clip that could not be loaded."""

    id: str
    reason: str


class DataFailureTracker:
    """Counts distinct failed clips of a split and stops the run past a threshold.

    ``check()`` raises ``DataError`` when ``count > max_failures * total`` (for
    ``max_failures`` a float in [0, 1)) or ``count > max_failures`` (an int is an
    absolute count). A clip that fails again (e.g. every epoch) counts once; its
    first reason is kept.

    With ``log_path`` every ``record`` is also appended to that file (one line
    ``id<TAB>reason``) and every read (``count``, ``failed``, ``check``, ``summary``)
    merges the file back in. A copy of the tracker in a DataLoader worker process
    (forked or spawned) appends to the same file, so failures met in workers are
    visible to the main process without any cooperation from the training loop.
    """

    def __init__(
        self,
        total: int,
        max_failures: float = 0.01,
        name: str = "dataset",
        log_path: str | Path | None = None,
    ) -> None:
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f"total must be a non-negative int, got {total!r}")
        if isinstance(max_failures, bool) or not isinstance(max_failures, (int, float)):
            raise TypeError(f"max_failures must be a float fraction or an int count, got {max_failures!r}")
        if isinstance(max_failures, float) and not 0.0 <= max_failures < 1.0:
            raise ValueError(f"max_failures as a fraction must be in [0, 1), got {max_failures!r}")
        if isinstance(max_failures, int) and max_failures < 0:
            raise ValueError(f"max_failures as a count must be >= 0, got {max_failures!r}")
        self.total = total
        self.max_failures = max_failures
        self.name = name
        self.log_path = None if log_path is None else Path(log_path)
        self._failed: dict[str, str] = {}

    @property
    def limit(self) -> float:
        """Largest number of failed clips that still passes ``check()``."""
        if isinstance(self.max_failures, float):
            return self.max_failures * self.total
        return float(self.max_failures)

    def record(self, clip_id: str, reason: str) -> None:
        """Remember that ``clip_id`` failed (no check; ``update`` records and checks)."""
        if not isinstance(clip_id, str) or not clip_id or any(c in clip_id for c in "\t\n\r"):
            raise ValueError(f"clip_id must be a non-empty single-line string without tabs, got {clip_id!r}")
        reason = " ".join(str(reason).split())
        if clip_id in self._failed:
            return
        self._failed[clip_id] = reason
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:  # one short append: atomic on POSIX
                fh.write(f"{clip_id}\t{reason}\n")

    def update(self, failures: Iterable[FailedSample | tuple[str, str]]) -> None:
        """Record every ``FailedSample`` / ``(id, reason)`` (e.g. ``batch["failures"]``), then ``check()``."""
        for f in failures:
            if isinstance(f, FailedSample):
                self.record(f.id, f.reason)
            else:
                clip_id, reason = f
                self.record(clip_id, reason)
        self.check()

    def _sync(self) -> None:
        if self.log_path is None or not self.log_path.is_file():
            return
        with open(self.log_path, encoding="utf-8") as fh:
            for line in fh:
                clip_id, sep, reason = line.rstrip("\n").partition("\t")
                if sep:  # a line still being written by another process has no newline yet: skip
                    self._failed.setdefault(clip_id, reason)

    @property
    def count(self) -> int:
        self._sync()
        return len(self._failed)

    @property
    def failed(self) -> dict[str, str]:
        """``{id: reason}`` of the failed clips, in the order they were first seen (a copy)."""
        self._sync()
        return dict(self._failed)

    def exceeded(self) -> bool:
        return self.count > self.limit

    def check(self) -> None:
        """Raise ``DataError`` naming the first failed clips when the threshold is exceeded."""
        if self.exceeded():
            raise DataError(self.summary(limit=5))

    def summary(self, limit: int = 10) -> str:
        """Report: count, threshold and the first ``limit`` ids with their reasons."""
        items = list(self.failed.items())
        head = (
            f"{self.name}: {len(items)} of {self.total} clips missing or broken "
            f"(allowed: {self.limit:g}"
            + (f" = {self.max_failures:.2%} of the split" if isinstance(self.max_failures, float) else "")
            + ")"
        )
        if not items:
            return head
        lines = [f"  {i}: {r}" for i, r in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more")
        return head + "\n" + "\n".join(lines)


def _remove_owned_file(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker's copy
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
