"""Training and evaluating a study's runs: :class:`Runner` (one run per model, margin, seed and train list,
cached in ``<out>/runs/<name>/result.json`` under a key of its full config), :func:`plan_runs` (every run a
set of studies needs) and :func:`execute_jobs` (several runs at a time in worker processes)."""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..evaluation import bound_rows, evaluate_model
from ..io import atomic_write_text, read_json
from ..layout import RunLayout
from ..training.checkpoint import load_checkpoint, load_model
from ..training.config import TrainConfig
from ..training.diagnostics import ClipLabels
from ..training.loop import build_test_set, build_train_set, train
from .paper import TABLE4_RUNS, TABLE5_ROWS, TABLE6_ROWS
from .presets import SeedPlan, StudyData, seeds_of

__all__ = ["Runner", "RunSpec", "run_name", "plan_runs", "figure_seed", "execute_runs", "execute_jobs",
           "selected_eval", "SELECTIONS", "StudyInterrupted"]


class StudyInterrupted(BaseException):
    """SIGINT or SIGTERM reached a study while it trained: every run it started is stopped, the finished ones are
    cached (re-running the command resumes from them); ``exit_status`` is 128 + the signal's number (130, 143). A
    ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` on the way (a clip decoder's failure
    accounting) may take it for an ordinary error."""

    def __init__(self, signum: int, finished: int = 0, total: int = 0) -> None:
        super().__init__(signum)
        self.signum, self.finished, self.total = signum, finished, total

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return (f"interrupted by {name}: {self.finished} of {self.total} training runs finished and are cached; "
                f"run the same command again to resume from them")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`StudyInterrupted` in the main thread for the duration (elsewhere: no-op)."""
    def handler(signum: int, frame: object) -> None:
        raise StudyInterrupted(signum)

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _worker_init() -> None:
    """A study's worker process leaves SIGINT to its parent (Ctrl-C reaches the whole process group: the parent
    stops every worker itself, so no worker dies with a traceback of its own). Its progress bars share a thread
    lock, not tqdm's default multiprocessing lock: a worker stopped by SIGTERM never runs its exit handlers, and
    that lock's named semaphore would be reported leaked after the study's last line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _stop_children(grace: float = 5.0) -> None:
    """Terminate this process's children (the pool's workers), then kill the ones still alive after ``grace`` s."""
    children = mp.active_children()
    for child in children:
        child.terminate()
    deadline = time.time() + grace
    for child in children:
        child.join(max(0.0, deadline - time.time()))
        if child.is_alive():
            child.kill()
            child.join(1.0)


def _stop_resource_tracker() -> None:
    """Stop and reap the spawn context's resource tracker, a child of this process too (not an ``mp.Process``),
    so that no process of an interrupted study outlives the command (left to CPython's shutdown, it exits after
    the command and stays a zombie until init reaps it). Called once the pool's own semaphores are gone."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # CPython's, >= 3.8
    if stop is not None:
        stop()

#: The checkpoint selections every study row reports (:func:`selected_eval`).
SELECTIONS = ("last", "best_val")


def selected_eval(result: dict[str, Any], test: str, selection: str) -> dict[str, Any]:
    """A run's evaluation on ``test`` for a checkpoint ``selection``: ``"last"`` (the last epoch) or
    ``"best_val"`` (the best epoch on the validation split).

    Raises:
        KeyError: the run has no such evaluation (no validation split: no ``best_val``).
    """
    if selection == "last":
        return result[test]
    if selection == "best_val":
        return result["_best_val"]["evals"][test]
    raise KeyError(f"selection: expected one of {SELECTIONS}, got {selection!r}")


def run_name(model: str, margin: float, seed: int, tag: str = "") -> str:
    return f"{tag}{model}_m{margin:+.2f}_s{seed}"


_TEST_SETS: dict[str, Any] = {}
_TRAIN_SETS: dict[str, Any] = {}


class Runner:
    """Trains (or reuses) one run per (model, margin, seed, train list) and evaluates it on test splits."""

    def __init__(self, out: Path, data: StudyData, train_kwargs: dict[str, Any], device: str, workers: int,
                 progress: bool, tensorboard: bool = False) -> None:
        self.out, self.data, self.train_kwargs = out, data, train_kwargs
        self.device, self.workers, self.progress, self.tensorboard = device, workers, progress, tensorboard
        self._bound_rows: dict[str, dict[str, dict[str, float]]] = {}
        self._labels: ClipLabels | None | bool = False  # read on first use

    @property
    def labels(self) -> ClipLabels | None:
        """The training clips' correspondences when the train root is embedded data (the mechanism's measures)."""
        if self._labels is False:
            self._labels = ClipLabels.from_embedded(self.data.train_root)
        return self._labels  # type: ignore[return-value]

    @property
    def has_val(self) -> bool:
        """Whether the study has a validation split (then every row reports ``best_val`` too)."""
        return bool(self.data.val_list)

    def val_set(self, val_list: str):
        """The validation split (``val_list``: the study's, or the heard classes' for Table 4)."""
        key = json.dumps([self.data.test_root, val_list, self.data.val_annotations, self.data.annotation_format,
                          bool(self.train_kwargs.get("cache")), self.train_kwargs.get("image_size", 224)])
        if key not in _TEST_SETS:
            _TEST_SETS[key] = build_test_set(self.data.test_root, val_list, self.data.val_annotations,
                                             self.data.annotation_format, cache=bool(self.train_kwargs.get("cache")),
                                             image_size=self.train_kwargs.get("image_size", TrainConfig.image_size))
        return _TEST_SETS[key]

    def test_set(self, test_list: str):
        image_size = self.train_kwargs.get("image_size", TrainConfig.image_size)
        key = json.dumps([self.data.test_root, test_list, self.data.annotations, self.data.annotation_format,
                          bool(self.train_kwargs.get("cache")), image_size])
        if key not in _TEST_SETS:  # shared by every runner of this process (decoded clips reused)
            _TEST_SETS[key] = build_test_set(self.data.test_root, test_list, self.data.annotations,
                                             self.data.annotation_format, cache=bool(self.train_kwargs.get("cache")),
                                             image_size=image_size)
        return _TEST_SETS[key]

    def train_set(self, config: TrainConfig):
        key = json.dumps([config.train_root, config.train_list, config.cache, config.max_failures, config.image_size])
        if key not in _TRAIN_SETS:
            _TRAIN_SETS.clear()  # one training set's decoded clips in memory at a time
            _TRAIN_SETS[key] = build_train_set(config)
        return _TRAIN_SETS[key]

    def bound_rows(self, test_list: str) -> dict[str, dict[str, Any]]:
        """``center prior`` and ``ceiling`` on every clip of the split, with ``per_clip`` scores."""
        if test_list not in self._bound_rows:
            self._bound_rows[test_list] = bound_rows(self.test_set(test_list))
        return self._bound_rows[test_list]

    def val_list_for(self, train_list: str) -> str:
        """The validation split of a training list: the heard classes' for the heard-class list (Table 4)."""
        if self.data.heard_val_list and train_list == self.data.heard_train_list:
            return self.data.heard_val_list
        return self.data.val_list

    def _config(self, model: str, margin: float, seed: int, train_list: str) -> TrainConfig:
        val = self.val_list_for(train_list) if self.has_val else ""
        return TrainConfig(model=model, margin=margin, seed=seed, train_root=self.data.train_root,
                           train_list=train_list, device=self.device, workers=self.workers,
                           val_root=self.data.test_root if val else "", val_list=val,
                           val_annotations=self.data.val_annotations if val else "", **self.train_kwargs)

    def _cache_entry(self, model: str, margin: float, seed: int, train_list: str, test_lists: Sequence[str],
                     tag: str = "") -> tuple[Path, TrainConfig, dict[str, Any]]:
        """Where a run's result lives, its config, and the key a cached result must carry."""
        config = self._config(model, margin, seed, train_list)
        path = RunLayout(self.out / "runs" / run_name(model, margin, seed, tag)).result
        return path, config, {"config": asdict(config), "tests": list(test_lists)}

    def _cached(self, *spec: Any) -> dict[str, dict[str, Any]] | None:
        """The cached results of ``spec``, if ``runs/<name>/result.json`` was made with its config: config
        fields added since the result was written take their defaults (``TrainConfig.from_dict``), as a
        resumed checkpoint's do; any other difference, or a file that does not parse, means no cached
        result (the run is trained again and the file replaced)."""
        path, _, key = self._cache_entry(*spec)
        if path.exists():
            try:  # a file cut short (hand edit, full disk) or a key this code cannot read: not a cached result
                cached = read_json(path, "cached run")
                old = cached.get("key") or {}
                same = old.get("tests") == key["tests"] and \
                    asdict(TrainConfig.from_dict(old.get("config", {}))) == key["config"] and "results" in cached
            except (TypeError, ValueError, AttributeError):  # JSONDecodeError is a ValueError
                same = False
            if same:
                return cached["results"]
        return None

    def is_cached(self, *spec: Any) -> bool:
        return self._cached(*spec) is not None

    def run(self, model: str, margin: float, seed: int, train_list: str, test_lists: Sequence[str],
            tag: str = "") -> dict[str, dict[str, Any]]:
        """Train once, evaluate on every test list; cached in ``runs/<name>/result.json``."""
        spec = (model, margin, seed, train_list, test_lists, tag)
        cached = self._cached(*spec)
        if cached is not None:
            return cached
        result_path, config, key = self._cache_entry(*spec)
        run_dir = result_path.parent
        name = run_dir.name
        t0, cpu0 = time.time(), time.process_time()
        if self.progress:
            print(f"  training {name} ...", flush=True)
        # no cached result for this key: whatever run_dir holds (a stale or killed run) is replaced
        layout = RunLayout(run_dir)
        train(config, run_dir, progress=self.progress, train_set=self.train_set(config), overwrite=True,
              curves_every_epoch=False, val_set=self.val_set(config.val_list) if config.val_list else None,
              labels=self.labels, tensorboard=self.tensorboard)
        net, _, state = load_model(layout.checkpoint)
        results: dict[str, Any] = {t: evaluate_model(net, self.test_set(t), self.device,
                                                     batch_size=64, workers=self.workers) for t in test_lists}
        if self.tensorboard:
            _log_evals(layout, config, {t: results[t] for t in test_lists})
        history = state.get("history", [])
        results["_epochs"] = [{k: r[k] for k in ("epoch", "loss", "val", "mechanism") if k in r} for r in history]
        if config.val_list:
            best = load_checkpoint(layout.best_val)
            if best["epoch"] == state["epoch"]:  # the last epoch is the best: the same weights
                evals = {t: results[t] for t in test_lists}
            else:
                net, _, _ = load_model(layout.best_val)
                evals = {t: evaluate_model(net, self.test_set(t), self.device, batch_size=64, workers=self.workers)
                         for t in test_lists}
            results["_best_val"] = {"epoch": best["epoch"], "val": best.get("val"), "evals": evals}
        # wall time depends on the machine's load; CPU time (this process, all its threads) does not
        results["_seconds"] = {"train_and_eval": round(time.time() - t0, 1),
                               "cpu": round(time.process_time() - cpu0, 1)}
        atomic_write_text(json.dumps({"key": key, "results": results}, indent=2), result_path)
        return results


def _log_evals(layout: RunLayout, config: TrainConfig, evals: dict[str, dict[str, Any]]) -> None:
    """A study run's test evaluations in its TensorBoard logs, at the last epoch: the first test list's as
    ``eval/*`` and the run's hparams beside them (as a plain run's final evaluation), every further list's as
    ``eval/<list stem>/*``."""
    from ..training.records import Scalars

    scalars = Scalars(layout.tensorboard, purge_step=None)
    try:
        for i, (test, result) in enumerate(evals.items()):
            scalars.eval(result, config.epochs, "eval" if i == 0 else f"eval/{Path(test).stem}")
        first = next(iter(evals.values()), None)
        if first is not None:
            scalars.hparams(asdict(config), {k: first[k] for k in ("ciou", "auc", "mean_ciou")})
    finally:
        scalars.close()


RunSpec = tuple[str, float, int, str, tuple[str, ...], str]  # model, margin, seed, train list, test lists, tag


def figure_seed(seeds: SeedPlan) -> int:
    """The seed Figure 1 shows: the first seed of the reference model that every Table 5 method ran."""
    own = {m: seeds_of(seeds, m) for m, _ in TABLE5_ROWS}
    common = [s for s in own["reference"] if all(s in v for v in own.values())]
    if not common:
        raise ValueError(f"figures: expected a seed that every Table 5 method runs, got {own}")
    return common[0]


def plan_runs(studies: Sequence[str], data: StudyData, seeds: Sequence[int],
              table5_seeds: SeedPlan | None = None) -> list[RunSpec]:
    """Every training run the requested studies need, once each (Table 6 shares rows with Table 5).
    ``table5_seeds``: Table 5's seeds, one sequence or each method's own (:data:`~.presets.SeedPlan`;
    ``None``: ``seeds``)."""
    runs: list[RunSpec] = []
    test = (data.test_list,)
    plan5 = seeds if table5_seeds is None else table5_seeds
    if "table5" in studies:
        runs += [(m, mg, s, data.train_list, test, "") for m, mg in TABLE5_ROWS for s in seeds_of(plan5, m)]
    elif "figures" in studies:
        runs += [(m, mg, figure_seed(plan5), data.train_list, test, "") for m, mg in TABLE5_ROWS]
    if "table6" in studies:
        runs += [(m, mg, s, data.train_list, test, "") for m, mg in TABLE6_ROWS for s in seeds]
    if "table4" in studies:
        tests = (data.heard_test_list, data.unheard_test_list)
        runs += [(m, mg, s, data.heard_train_list, tests, "heard_") for m, mg in TABLE4_RUNS for s in seeds]
    return list(dict.fromkeys(runs))


_WORKER_RUNNERS: dict[str, Runner] = {}  # per worker process (its datasets are shared: _TEST_SETS, _TRAIN_SETS)


def _run_job(args: tuple[Path, StudyData, dict[str, Any], str, int, bool, int, RunSpec]) -> tuple[str, float]:
    out, data, train_kwargs, device, workers, tensorboard, threads, (model, margin, seed, train_list, tests, tag) = args
    torch.set_num_threads(threads)
    t0 = time.time()
    key = json.dumps([str(out), asdict(data), train_kwargs, device, workers, tensorboard], sort_keys=True)
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = Runner(out, data, train_kwargs, device, workers, progress=False,
                                      tensorboard=tensorboard)
    _WORKER_RUNNERS[key].run(model, margin, seed, train_list, tests, tag)
    return run_name(model, margin, seed, tag), time.time() - t0


def execute_runs(runner: Runner, runs: Sequence[RunSpec], jobs: int) -> None:
    """Train and evaluate ``runs`` of one runner (see :func:`execute_jobs`)."""
    execute_jobs([(runner, r) for r in runs], jobs)


def execute_jobs(pairs: Sequence[tuple[Runner, RunSpec]], jobs: int) -> None:
    """Train and evaluate each ``(runner, run)`` (cached ones are skipped), ``jobs`` at a time in separate
    processes, each with ``cpu_count // jobs`` threads: small CPU models use two single-thread processes
    better than one two-thread process. A worker process keeps its decoded clips for its next runs."""
    todo = [(rn, r) for rn, r in pairs if not rn.is_cached(*r)]
    if not todo:
        return
    print(f"{len(todo)} training runs to do ({len(pairs) - len(todo)} cached), {jobs} at a time", flush=True)
    done = 0
    with _interruptible():
        try:
            if jobs <= 1:
                for rn, r in todo:
                    rn.run(*r)
                    done += 1
                return
            threads = max(1, (os.cpu_count() or 1) // jobs)
            args = [(rn.out, rn.data, rn.train_kwargs, rn.device, rn.workers, rn.tensorboard, threads, r)
                    for rn, r in todo]
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
            futures: list[Any] = []
            try:
                futures += [pool.submit(_run_job, a) for a in args]
                for i, f in enumerate(as_completed(futures), 1):
                    name, seconds = f.result()
                    done = i
                    print(f"  [{i}/{len(todo)}] {name} done in {seconds:.0f} s", flush=True)
            except StudyInterrupted:
                # shutdown(wait=False) forgets the pool's manager thread, so a later shutdown(wait=True) cannot
                # join it: held here, it is joined, and with it go the queues' feeder thread and semaphores
                manager = getattr(pool, "_executor_manager_thread", None)
                pool.shutdown(wait=False, cancel_futures=True)  # nothing queued starts
                _stop_children()
                pool.shutdown(wait=True)
                if manager is not None:
                    manager.join(10.0)
                del pool, futures, manager
                gc.collect()  # the pool's semaphores are gone before its resource tracker stops
                _stop_resource_tracker()
                raise
            pool.shutdown(wait=True)
        except StudyInterrupted as e:
            e.finished, e.total = done, len(todo)
            raise
    gc.collect()

