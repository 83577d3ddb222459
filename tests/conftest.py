"""Shared fixtures of the test suite.

- ``upstream_metadata``: the folder of real upstream metadata files (VGG-SS boxes, clip lists) that
  some tests read. It is not part of the repository: set ``MARGINNCE_UPSTREAM_METADATA`` to it,
  default ``../shared/upstream-metadata`` beside the checkout. Tests that need it skip, with the
  path and the variable in the reason, when it is missing; the header of every run says where it
  was looked for. Module-level skip conditions use :data:`UPSTREAM_METADATA`.
- ``one_thread``: one intra-op thread for the duration of a test (tiny convolutions gain nothing
  from more, and on a busy machine several threads per process can slow them down many times over);
  :func:`torch_threads` is the same for a block of a test.
- ``av_dataset``: a factory of the tiny audio-visual data sets of ``tests/fixtures.py``, each written once
  per session for its arguments and shared read-only (a test that breaks clips makes its own).
- ``train_fx``: the trainer tests' data set (16 training clips, 8 test clips), for test_train.py and
  test_train_config.py.
- ``videos``: small real video files (good and broken) for tests/test_prepare*.py, written once per session.
- ``embedded_cache`` / ``use_embedded_cache``: one ``MARGINNCE_CACHE`` for the session's study tests.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

#: Where the upstream metadata is looked for (``$MARGINNCE_UPSTREAM_METADATA``, else ``<repo>/../shared/upstream-metadata``).
UPSTREAM_METADATA = Path(os.environ.get("MARGINNCE_UPSTREAM_METADATA") or REPO.parent / "shared" / "upstream-metadata")

UPSTREAM_METADATA_MISSING = (
    f"upstream metadata not found at {UPSTREAM_METADATA} "
    "(set MARGINNCE_UPSTREAM_METADATA to the folder that holds ezvsl/vggss.json)"
)


def pytest_report_header(config: pytest.Config) -> str:
    found = "found" if UPSTREAM_METADATA.is_dir() else "MISSING: tests that read it skip; set MARGINNCE_UPSTREAM_METADATA"
    return f"upstream metadata: {UPSTREAM_METADATA} ({found})"


@pytest.fixture(scope="session")
def upstream_metadata() -> Path:
    """The upstream metadata folder (holding ``ezvsl/``); skips the test when it is missing."""
    if not UPSTREAM_METADATA.is_dir():
        pytest.skip(UPSTREAM_METADATA_MISSING)
    return UPSTREAM_METADATA


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """``n`` intra-op torch threads inside the block, the previous count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored afterwards."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def av_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``av_dataset(n_train=16, n_test=8, **kwargs)``: :func:`tests.fixtures.make_av_dataset` written once per
    session for each set of arguments; callers must not modify it."""
    from .fixtures import make_av_dataset

    made: dict[tuple[tuple[str, Any], ...], Any] = {}

    def make(**kwargs: Any) -> Any:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            made[key] = make_av_dataset(tmp_path_factory.mktemp("av") / "data", **kwargs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def train_fx(av_dataset: Callable[..., Any]) -> Any:
    """The trainer tests' :class:`tests.fixtures.AVFixture`: 16 training clips, 8 test clips; read-only."""
    return av_dataset(n_train=16, n_test=8)


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """A folder with three good clips and one of each kind of bad clip (:data:`tests.fixtures.BAD_REASONS`),
    written once per session with PyAV for tests/test_prepare*.py; read-only."""
    from .fixtures import good_clips, write_video

    folder = tmp_path_factory.mktemp("videos")
    specs = good_clips(folder)
    good = folder / "zpWuikVorYg_000032.mp4"
    # MP4 keeps its index (moov) at the end: a cut file cannot be opened.
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "garbage.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    write_video(folder / "silent.mp4", n_frames=30, audio_seconds=None)
    write_video(folder / "audio_only.mkv", n_frames=None, acodec="pcm_s16le", rate=22050)
    write_video(folder / "short_audio.mkv", n_frames=30, audio_seconds=0.5, acodec="pcm_s16le", rate=22050)
    write_video(folder / "late_frame.mkv", n_frames=100, audio_seconds=2.0, acodec="pcm_s16le", rate=22050)
    (folder / "notes.txt").write_text("not a video")
    return folder, specs


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``MARGINNCE_CACHE`` folder shared by the session's study tests, set in the environment while a test uses
    it (subprocesses inherit it); the embedded data sets they generate are made once per session."""
    cache = tmp_path_factory.mktemp("embedded-cache")
    yield cache


@pytest.fixture
def use_embedded_cache(embedded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`embedded_cache` as this test's ``MARGINNCE_CACHE``."""
    monkeypatch.setenv("MARGINNCE_CACHE", str(embedded_cache))
    return embedded_cache


@pytest.fixture(autouse=True, scope="module")
def _collect_after_module():
    """Collect the garbage each test module leaves before the next one forks: a PyAV frame in a reference cycle,
    freed in a forked DataLoader or pool worker, waits forever on codec threads the fork did not copy (a hang
    seen in tests/test_datasets.py's loader workers after the video tests)."""
    yield
    gc.collect()
