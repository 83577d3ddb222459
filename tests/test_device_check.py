"""``python -m benchmarks.device_check --device cpu --tiny``: the dry run of the GPU check runs every step
end to end and writes its report; a failing or hanging step is recorded and the next steps still run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import device_check as DC
from benchmarks.run import device_name


def test_tiny_cpu_dry_run_writes_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGINNCE_CACHE", str(tmp_path / "cache"))  # the embedded data goes here (children inherit it)
    out = tmp_path / "out"
    rc = DC.main(["--device", "cpu", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")])
    stem = f"device-check-{device_name(torch.device('cpu'))}-tiny"
    report = json.loads((out / f"{stem}.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["name"] for s in report["steps"]] == list(DC.STEPS)
    assert rc == 0, {name: (s["status"], s["error"], s["output_tail"]) for name, s in steps.items()}

    meta = report["meta"]
    for key in ("device", "torch", "cuda", "python", "cpu_count", "date", "command", "total_seconds", "budget_s"):
        assert key in meta
    assert meta["tiny"] is True and meta["complete"] is True and meta["device_type"] == "cpu" and meta["stopped"] is None
    assert meta["budget_s"] == DC.DEFAULT_BUDGET_S == 360
    assert meta["matmul"] == {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                              "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "cuda_matmul_allow_bf16_reduced_precision_reduction":
                                  torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                              "cuda_matmul_allow_fp16_reduced_precision_reduction":
                                  torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction}
    caches = meta["compile_caches"]  # inside the work folder, unless the environment sets them
    assert all(Path(v).is_relative_to(tmp_path / "work") for v in caches.values())
    assert ("TORCHINDUCTOR_CACHE_DIR" in caches) != bool(os.environ.get("TORCHINDUCTOR_CACHE_DIR"))

    for name, s in steps.items():
        assert s["status"] in DC.STATUSES and s["command"] and s["seconds"] > 0, name
        assert s["status"] == ("skipped" if name == "cuda_tests" else "ok"), (name, s["error"], s["output_tail"])

    tests = steps["cuda_tests"]["results"]  # the CUDA-only step, run as a dry run: every CUDA test skips
    assert tests["failed"] == tests["error"] == 0 and tests["skipped"] >= 1 and tests["total"] >= tests["skipped"]
    assert any("cuda" in reason.lower() for reason in tests["skip_reasons"])
    assert "CUDA" in steps["cuda_tests"]["error"]

    kernels = steps["kernels"]["results"]  # the most valuable step runs first
    assert [c["case"] for c in kernels["cases"]] == list(DC.KERNEL_CASES) and len(kernels["cases"]) == 6
    assert all(c["eager_vs_float64"] <= kernels["eager_tol"] for c in kernels["cases"])
    (compiled,) = [c for c in kernels["cases"] if c["compiled"]]  # --tiny: one compile on the CPU
    assert compiled["case"] == "max_similarity" and compiled["fallback"] is None and "error" not in compiled
    assert compiled["compiled_vs_eager"] <= kernels["compiled_tol"] and compiled["first_call_s"] > 0
    assert all(kernels["checks"].values()) and len(kernels["checks"]) == 6 + 2

    data = steps["embedded_data"]["results"]
    assert (data["num_train"], data["num_test"]) == (32, 8) and Path(data["root"]).is_relative_to(tmp_path)

    slice_ = steps["train_slice"]["results"]
    assert slice_["batch"] == 8 and slice_["image"] == [3, 224, 224] and slice_["spectrogram"] == [1, 257, 200]
    assert slice_["timed_steps"] == 3 and slice_["clips_per_s"] > 0 and slice_["loader_clips_per_s"] > 0
    assert 0 < slice_["loss_share"] < 1 and slice_["loss_ms"] > 0
    assert slice_["loss_backend"] == "auto" and slice_["loss_backend_resolved"] == "eager"  # compiled on CUDA only
    assert all(slice_["checks"].values()) and slice_["data_failures"] == 0
    assert slice_["peak_allocated_GiB"] is None  # measured on CUDA only
    # loader and step together: the steps after the first of a fresh epoch's loader
    assert slice_["pipeline_steps"] == 2 and slice_["pipeline_clips"] == 16 and slice_["pipeline_clips_per_s"] > 0
    assert slice_["loader_vs_step"] > 0 and slice_["matmul"] == meta["matmul"]

    ddp = steps["torchrun_ddp"]["results"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and all(ddp["checks"].values())
    assert ddp["loss_rel_diff"] <= ddp["loss_rel_tol"] and len(ddp["step_losses"]) == 2

    trainer = steps["torchrun_train"]["results"]
    assert trainer["steps"] == 2 and trainer["loss"] > 0

    bench = steps["benchmarks_run"]["results"]
    assert {r["formulation"] for r in bench["losses"]} == {"max-MIL", "eq1"}
    largest = json.loads((out / bench["json"]).read_text())["scale"]["largest_batch"]  # the largest B in 16 GiB
    assert {(r["formulation"], r["budget_GiB"]) for r in largest} == {("max-MIL", 16.0), ("eq1", 16.0)}
    assert all(r["matches_upstream"] is not False for r in bench["losses"])
    assert (out / bench["json"]).is_file() and (out / bench["markdown"]).is_file()

    md = (out / f"{stem}.md").read_text()
    assert md.startswith(f"# Device check: {meta['device']}")
    for name in DC.STEPS:
        assert f"| {name} | {steps[name]['status']} |" in md
    assert "## benchmarks.run tables" in md and "Partial results" not in md
    assert "| TF32: matmul / cuDNN |" in md and "| max_similarity | 8x16x3x3 |" in md


def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx, rec):
        raise RuntimeError("the GPU caught fire")

    def fine(ctx, rec):
        rec.status, rec.seconds, rec.command = "ok", 0.01, "true"
        ctx.data_ok = True

    monkeypatch.setattr(DC, "STEP_FUNCTIONS", {name: broken if name == "train_slice" else fine for name in DC.STEPS})
    out = tmp_path / "out"
    assert DC.main(["--device", "cpu", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")]) == 1
    (path,) = out.glob("*.json")
    steps = {s["name"]: s for s in json.loads(path.read_text())["steps"]}
    assert steps["train_slice"]["status"] == "failed"
    assert steps["train_slice"]["error"] == "RuntimeError: the GPU caught fire"
    assert all(s["status"] == "ok" for name, s in steps.items() if name != "train_slice")
    assert "| train_slice | failed |" in path.with_suffix(".md").read_text()


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    # the child starts a grandchild that would outlive it; the whole process group goes
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "print('started', flush=True); time.sleep(60)"
    start = time.perf_counter()
    done = DC.run_process([sys.executable, "-c", script], 2.0, tmp_path / "log.txt")
    assert done.timed_out and done.returncode is not None and done.returncode < 0
    assert time.perf_counter() - start < 20  # not the child's 60 s, nor the grandchild's (its pipe would block)
    assert done.tail == ["started"] and (tmp_path / "log.txt").read_text() == "started\n"

    rec = DC.StepRecord("x", "x")
    DC._finish(rec, done, [])
    assert rec.status == "timeout" and rec.output_tail == ["started"] and "time limit" in rec.error


def test_a_nonzero_exit_or_a_failed_check_fails_the_step() -> None:
    rec = DC.StepRecord("x", "x")
    DC._finish(rec, DC.Completed(returncode=2, seconds=1.0, timed_out=False, tail=["Traceback", "Boom"]), [])
    assert (rec.status, rec.error, rec.output_tail) == ("failed", "exit status 2", ["Traceback", "Boom"])
    rec = DC.StepRecord("x", "x")
    DC._finish(rec, DC.Completed(returncode=0, seconds=1.0, timed_out=False, tail=[]), ["check failed: loss_finite"])
    assert (rec.status, rec.error) == ("failed", "check failed: loss_finite")


def test_pytest_outcomes_are_read_from_junit_xml_or_verbose_output(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="1.0">'
        '<failure message="AssertionError: 1 != 2">Traceback\nE  AssertionError: 1 != 2</failure></testcase>'
        '<testcase classname="tests.test_a" name="test_gpu" time="0"><skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    got = DC._junit_counts(xml)
    assert (got["passed"], got["failed"], got["error"], got["skipped"], got["total"]) == (1, 1, 0, 1, 3)
    assert got["skip_reasons"] == ["needs a CUDA GPU"]
    bad = next(t for t in got["tests"] if t["outcome"] == "failed")
    assert bad["message"] == "AssertionError: 1 != 2" and bad["details"][-1] == "E  AssertionError: 1 != 2"

    text = ("tests/test_a.py::test_ok PASSED   [ 33%]\ntests/test_a.py::test_x[a b] FAILED  [ 66%]\n"
            "tests/test_a.py::test_gpu SKIPPED (needs a CUDA GPU)  [100%]\nnoise\n")
    got = DC._verbose_counts(text)
    assert (got["passed"], got["failed"], got["skipped"], got["total"]) == (1, 1, 1, 3)
    assert got["tests"][1]["test"] == "tests/test_a.py::test_x[a b]"


def test_a_check_whose_budget_is_spent_after_its_first_step_leaves_valid_partial_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    seen: list[dict] = []

    def first(ctx, rec):
        (path,) = out.glob("*.json")  # written before the step: it shows the step running, the rest not yet run
        seen.append({s["name"]: s["status"] for s in json.loads(path.read_text())["steps"]})
        time.sleep(1.5)
        rec.status, rec.seconds, rec.command, rec.results = "ok", 1.5, "true", {"measured": 1}

    def never(ctx, rec):
        raise AssertionError("a step ran past the budget")

    monkeypatch.setattr(DC, "STEP_FUNCTIONS", {name: first if name == DC.STEPS[0] else never for name in DC.STEPS})
    assert DC.main(["--device", "cpu", "--tiny", "--out", str(out), "--budget", "6",
                    "--work", str(tmp_path / "work")]) == 0
    assert seen == [{name: "running" if name == DC.STEPS[0] else "skipped" for name in DC.STEPS}]
    (path,) = out.glob("*.json")
    report = json.loads(path.read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert steps[DC.STEPS[0]]["status"] == "ok" and steps[DC.STEPS[0]]["results"] == {"measured": 1}
    for name in DC.STEPS[1:]:
        assert steps[name]["status"] == "skipped" and "budget (6 s) is spent" in steps[name]["error"], name
    md = path.with_suffix(".md").read_text()
    assert f"| {DC.STEPS[0]} | ok |" in md and f"| {DC.STEPS[1]} | skipped |" in md


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux ``/proc``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="reads /proc to find the step's processes")
def test_a_check_stopped_by_sigterm_mid_step_leaves_valid_partial_results(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "MARGINNCE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(DC.REPO)), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--device", "cpu", "--tiny", "--out", str(out),
           "--work", str(work), "--steps", "embedded_data", "train_slice", "torchrun_ddp"]
    log = tmp_path / "check.log"
    marker = str(work / "train_slice.config.json")  # on the train_slice worker's command line
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=DC.REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not _processes_naming(marker):  # the check is inside train_slice, its worker running
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _processes_naming(marker) == [], log.read_text()[-3000:]  # the step's processes stopped with the check
    (path,) = out.glob("*.json")
    report = json.loads(path.read_text())
    assert report["meta"]["stopped"] == "SIGTERM" and report["meta"]["complete"] is False
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["embedded_data"]["status"] == "ok" and steps["embedded_data"]["results"]["num_train"] == 32
    assert steps["kernels"]["error"] == "not asked for (--steps)"
    # the step that ran when the signal came: train_slice (its worker was seen running), or torchrun_ddp when the
    # worker was seen in its last moments; the steps before it complete, the ones after it not run
    # (or, in the moment between two steps, none)
    asked = ["train_slice", "torchrun_ddp"]
    statuses = [steps[name]["status"] for name in asked]
    done = statuses.index("interrupted") if "interrupted" in statuses else statuses.index("skipped")
    assert done < len(asked) and all(status in ("ok", "failed") for status in statuses[:done]), statuses
    for name in asked[done + (statuses[done] == "interrupted"):]:
        assert steps[name]["status"] == "skipped" and "stopped (SIGTERM)" in steps[name]["error"]
    md = path.with_suffix(".md").read_text()
    assert "**Partial results** (stopped by SIGTERM)" in md
    if statuses[done] == "interrupted":
        assert "SIGTERM" in steps[asked[done]]["error"] and f"| {asked[done]} | interrupted |" in md
