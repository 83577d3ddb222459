"""The crash-isolating worker pool: each clip in a worker process; a worker that dies costs only its own clip
(the suspects are retried one by one)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .._checks import check_int
from ..layout import AUDIO_DIR, FRAMES_DIR
from .ids import ClipError
from .output import TMP_SUFFIX, _prepare_clip
from .window import WindowRule

# Test hooks, read only in the worker wrapper ``_work`` (never by ``prepare_clip``):
# seconds to pause between writing the temp files and renaming them, and an id whose
# worker process exits abruptly (to exercise kill/resume and crash isolation).
_PAUSE_ENV = "MARGINNCE_PREPARE_TEST_PAUSE"

_CRASH_ENV = "MARGINNCE_PREPARE_TEST_CRASH_ID"

_IN_FLIGHT_PER_WORKER = 4


def _check_workers(workers: int) -> int:
    """Validate ``workers``: an int >= 1 (``TypeError`` / ``ValueError`` otherwise)."""
    return check_int("workers", workers, 1)

_Task = tuple[str, str, str, float, WindowRule, "int | None", str]

_Result = tuple[str, "str | None", "dict[str, object] | None"]


def _work(task: _Task) -> _Result:
    """Pool task: prepare one clip; ``(id, None, report entry)`` or ``(id, reason, None)``; never raises."""
    clip_id, video, out_root, audio_seconds, window, frame_size, frame_format = task
    if os.environ.get(_CRASH_ENV) == clip_id:
        os._exit(70)
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    try:
        clip = _prepare_clip(Path(video), Path(out_root), audio_seconds, window, pause_before_rename=pause,
                             frame_size=frame_size, frame_format=frame_format)
    except ClipError as error:
        return clip_id, error.reason, None
    except Exception as error:  # anything else is recorded, never allowed to stop the run
        return clip_id, f"unexpected error: {type(error).__name__}: {error}", None
    return clip_id, None, clip.report()


def clean_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete ``*.tmp`` files left in ``root/frames`` and ``root/audio``; return how many."""
    removed = 0
    for sub in (FRAMES_DIR, AUDIO_DIR):
        folder = Path(root) / sub
        if folder.is_dir():
            for tmp in folder.glob(f"*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _run_pool(
    tasks: Sequence[_Task],
    workers: int,
    on_result: Callable[[str, str | None, dict[str, object] | None], None],
) -> None:
    """Run ``_work`` over ``tasks`` in processes, calling ``on_result(id, reason, entry)`` for each.

    At most ``_IN_FLIGHT_PER_WORKER * workers`` tasks are submitted at a time.  If a worker
    process dies, the pool breaks and every unfinished task in flight is re-run alone in a
    fresh one-process pool; a task that kills that one too is reported as
    ``worker crashed``.  Then a fresh pool carries on with the remaining tasks.
    """
    pending = deque(tasks)
    while pending:
        suspects: list[_Task] = []
        gc.collect()  # before the workers fork (training.step.make_train_loader says why)
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            in_flight: dict[cf.Future[_Result], _Task] = {}
            while pending or in_flight:
                while pending and len(in_flight) < _IN_FLIGHT_PER_WORKER * workers:
                    task = pending.popleft()
                    in_flight[pool.submit(_work, task)] = task
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                broken = False
                for future in finished:
                    task = in_flight.pop(future)
                    try:
                        on_result(*future.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                        broken = True
                if broken:
                    cf.wait(in_flight)
                    for future, task in in_flight.items():
                        if isinstance(future.exception(), BrokenProcessPool):
                            suspects.append(task)
                        else:
                            on_result(*future.result())
                    break
        for task in suspects:
            with cf.ProcessPoolExecutor(max_workers=1) as lone:
                try:
                    on_result(*lone.submit(_work, task).result())
                except BrokenProcessPool:
                    on_result(task[0], "worker crashed: the worker process died while preparing this clip", None)
