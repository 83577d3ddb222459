"""The device check's subprocesses: each step runs in a process group of its own, its output echoed and logged,
killed (with its children) past its time limit."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "Completed", "run_process"]


REPO = Path(__file__).resolve().parents[2]  # the repository root (benchmarks/device/process.py)


TAIL_LINES = 40  # output lines kept in the record of a step that did not succeed


@dataclass
class Completed:
    returncode: int | None
    seconds: float
    timed_out: bool
    tail: list[str]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group ``proc`` leads (torchrun's and DataLoader's children too)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(cmd: Sequence[str], limit_s: float, log_path: Path, env: dict[str, str] | None = None,
                prefix: str = "") -> Completed:
    """Run ``cmd`` in the repository root in a new process group, echo its output (``prefix``ed) and
    write it to ``log_path``; past ``limit_s`` seconds, or when the caller is interrupted (any exception while
    waiting, re-raised), the whole group is killed."""
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    full_env.update(env or {})
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                print(f"{prefix}{line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:  # the check itself was stopped (SIGTERM, Ctrl-C): its step's processes go too
            _kill_group(proc)
            raise
        reader.join(timeout=10.0)
    return Completed(proc.returncode, time.perf_counter() - start, timed_out, list(tail))


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 1 ...`` (as ``python -m torch.distributed.run``, the same program)."""
    return _python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args)


def _shown(cmd: Sequence[str]) -> str:
    """The command as a person would type it."""
    words = list(cmd)
    if words[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        words = ["torchrun"] + words[3:]
    elif words and words[0] == sys.executable:
        words = ["python"] + words[1:]
    return " ".join(words)
