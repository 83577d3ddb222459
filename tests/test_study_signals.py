"""A study can be stopped: Ctrl-C (SIGINT to the whole process group), SIGINT or SIGTERM to the command alone stop
every run it started within seconds, leave no process behind and no half-written result, print one line saying how
many runs finished and that re-running resumes from the cache, and exit 130 (SIGINT) or 143 (SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("PIL")
pytest.importorskip("soundfile")

from marginnce_kit.studies.presets import embedded_data  # noqa: E402

from .conftest import REPO  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and groups")]


@pytest.fixture(scope="module")
def smoke_data(embedded_cache: Path) -> Path:
    """The smoke preset's data set, generated once into the session's cache (so the command starts training soon)."""
    old = os.environ.get("MARGINNCE_CACHE")
    os.environ["MARGINNCE_CACHE"] = str(embedded_cache)
    try:
        embedded_data("smoke")
    finally:
        if old is None:
            os.environ.pop("MARGINNCE_CACHE", None)
        else:
            os.environ["MARGINNCE_CACHE"] = old
    return embedded_cache


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("target, sig, jobs, status", [
    ("group", signal.SIGINT, 2, 130),   # Ctrl-C in a terminal
    ("parent", signal.SIGINT, 2, 130),
    ("parent", signal.SIGTERM, 2, 143),  # kill, a batch scheduler
    ("parent", signal.SIGTERM, 1, 143),  # runs in the command's own process
])
def test_a_signal_stops_the_whole_study(smoke_data: Path, tmp_path: Path, target: str, sig: signal.Signals,
                                        jobs: int, status: int) -> None:
    env = dict(os.environ, MARGINNCE_CACHE=str(smoke_data), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "marginnce_kit.table5", "--preset", "smoke", "--out", str(out),
                             "--no-progress", "--jobs", str(jobs)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    pgid = proc.pid
    try:
        assert proc.stdout is not None
        deadline = time.time() + 240
        for line in proc.stdout:  # wait until the runs are being trained
            if "training runs to do" in line or time.time() > deadline:
                break
        time.sleep(6.0)  # the workers have started and are inside a run
        assert proc.poll() is None, "the study ended before the signal"
        (os.killpg(pgid, sig) if target == "group" else proc.send_signal(sig))
        t0 = time.time()
        stdout, stderr = proc.communicate(timeout=60)
        stopped_in = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert f"interrupted by {sig.name}: " in last and "run the same command again to resume" in last, stderr
    time.sleep(0.5)
    assert not _group_alive(pgid), "a process of the study is still running"
    for result in out.glob("runs/*/result.json"):  # every result that exists is whole (written atomically)
        assert "results" in json.loads(result.read_text())
    print(f"{target} {sig.name}: stopped in {stopped_in:.1f} s")  # reported, not asserted (machine-dependent)
