"""The device check's report: the machine (:func:`device_meta`) and the Markdown of the steps so far."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

import torch

from ..machine import device_name, matmul_settings
from .plan import StepRecord

__all__ = ["device_meta", "markdown"]


def device_meta(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "matmul": matmul_settings(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update({
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_GiB": round(props.total_memory / 2**30, 2),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(str(v) for v in torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else None,
        })
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 check=False, capture_output=True, text=True, timeout=20)
            meta["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["driver"] = None
    return meta


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sci(v: Any) -> str:
    return "–" if v is None else f"{v:.1e}"


def _key_numbers(rec: StepRecord) -> str:
    r = rec.results
    if not r:
        return rec.error or ""
    if rec.name == "kernels" and r.get("cases"):
        cases = r["cases"]
        compiled = [c for c in cases if c["compiled"]]
        text = f"{len(cases)} cases, eager vs float64 <= {max(c['eager_vs_float64'] for c in cases):.1e}"
        if compiled:
            worst = max(c.get("compiled_vs_eager", float("inf")) for c in compiled)
            bad = [c["case"] for c in compiled if c.get("fallback") or c.get("error")]
            text += f"; {len(compiled)} compiled, vs eager <= {worst:.1e}" + (f", FELL BACK: {bad}" if bad else "")
        return text
    if rec.name == "embedded_data":
        return f"{r['num_train']} train / {r['num_test']} test clips" + (" (cached)" if r.get("was_cached") else "")
    if rec.name == "cuda_tests":
        return (f"{r.get('passed', 0)} passed, {r.get('failed', 0)} failed, {r.get('error', 0)} errors, "
                f"{r.get('skipped', 0)} skipped")
    if rec.name == "train_slice" and "clips_per_s" in r:
        mem = "" if r.get("peak_allocated_GiB") is None else f", peak {r['peak_allocated_GiB']:.2f} GiB"
        return (
            f"{r['clips_per_s']:.0f} clips/s (batch {r['batch']}, {r['step_ms']:.1f} ms/step){mem}, "
            f"loss share {100 * r['loss_share']:.2f}%, loss {'finite' if r['checks']['loss_finite'] else 'NOT finite'}"
        )
    if rec.name == "torchrun_ddp" and "backend" in r:
        return (
            f"{r['backend']}, world {r['world_size']}: DDP vs plain loss rel. diff {r['loss_rel_diff']:.1e}, "
            f"grads {r['grad_rel_diff']:.1e}; {r['steps']} steps"
        )
    if rec.name == "torchrun_train" and "loss" in r:
        return f"{r['steps']} steps, loss {_fmt(r['loss'], 4)}"
    if rec.name == "benchmarks_run" and "losses" in r:
        comp = [x for x in r["losses"] if x["variant"] == "compiled"] or [
            x for x in r["losses"] if x["variant"] == "eager"
        ]
        if comp:
            return "speed-up vs upstream: " + ", ".join(
                f"{x['formulation']} B={x['B']} {x['H']}x{x['W']} {x['variant']} {x['speedup_vs_upstream']:.2f}x"
                for x in comp
            )
    return rec.error or ""


def markdown(meta: dict[str, Any], records: list[StepRecord], bench_md: str | None) -> str:
    lines = [
        f"# Device check: {meta['device']}",
        "",
        (
            f"`{meta['command']}` on {meta['date']}, {meta['total_seconds']:.0f} s in all "
            f"(budget {meta['budget_s']:.0f} s){'; tiny sizes (dry run)' if meta['tiny'] else ''}."
        ),
        "",
    ]
    env = [
        ("device", meta.get("gpu") or meta["device"]),
        ("torch", meta["torch"]),
        ("CUDA", meta.get("cuda")),
        ("cuDNN", meta.get("cudnn")),
        ("NCCL", meta.get("nccl")),
        ("driver", meta.get("driver")),
        ("GPU memory", f"{meta['gpu_memory_GiB']} GiB" if meta.get("gpu_memory_GiB") else None),
        ("compute capability", meta.get("compute_capability")),
        ("python", meta["python"]),
        ("CPU cores", meta["cpu_count"]),
    ]
    m = meta.get("matmul") or {}
    if m:
        env += [
            ("float32 matmul precision", m["float32_matmul_precision"]),
            ("TF32: matmul / cuDNN", f"{m['cuda_matmul_allow_tf32']} / {m['cudnn_allow_tf32']}"),
            ("reduced-precision reductions: bf16 / fp16",
             f"{m['cuda_matmul_allow_bf16_reduced_precision_reduction']} / "
             f"{m['cuda_matmul_allow_fp16_reduced_precision_reduction']}"),
        ]
    lines += ["| | |", "|:---|:---|"] + [f"| {k} | {_fmt(v)} |" for k, v in env if v is not None] + [""]
    if not meta.get("complete"):
        why = f"stopped by {meta['stopped']}" if meta.get("stopped") else "still running, or cut before its end"
        lines += [f"**Partial results** ({why}): the steps below that ran are complete; the others are marked.", ""]
    lines += ["## Steps", "", "| step | status | seconds | result |", "|:---|:---|---:|:---|"]
    for rec in records:
        lines.append(f"| {rec.name} | {rec.status} | {rec.seconds:.1f} | {_key_numbers(rec)} |")
    lines.append("")
    for rec in records:
        lines += [f"## {rec.name}: {rec.title}", "", f"Status **{rec.status}** in {rec.seconds:.1f} s."]
        if rec.command:
            lines += ["", f"`{rec.command}`"]
        if rec.error:
            lines += ["", f"{'Reason' if rec.status == 'skipped' else 'Error'}: {rec.error}"]
        r = rec.results
        if rec.name == "train_slice" and "clips_per_s" in r:
            lines += ["", "| quantity | value |", "|:---|---:|"] + [
                f"| {k} | {_fmt(v, 4)} |"
                for k, v in (
                    ("batch", r["batch"]),
                    ("image", "x".join(map(str, r["image"]))),
                    ("spectrogram", "x".join(map(str, r["spectrogram"]))),
                    ("backbone", r["backbone"]),
                    ("features", f"{'x'.join(map(str, r['feature_map']))} {r['feature_dtype']}"),
                    ("autocast", r["autocast"]),
                    ("loss backend (resolved)", f"{r['loss_backend']} ({r['loss_backend_resolved']})"),
                    ("compiled fallback", r["compiled_fallback"]),
                    ("first step s (compiles)", r["first_step_s"]),
                    ("timed steps", r["timed_steps"]),
                    ("ms / step", r["step_ms"]),
                    ("clips / s", r["clips_per_s"]),
                    ("resident before the steps GiB (model, Adam, batches)", r["resident_GiB"]),
                    ("peak allocated GiB", r["peak_allocated_GiB"]),
                    ("peak reserved GiB", r["peak_reserved_GiB"]),
                    ("loss fwd+bwd ms", r["loss_ms"]),
                    ("step ms (interleaved)", r["step_ms_interleaved"]),
                    ("loss share of a step", f"{100 * r['loss_share']:.2f}%"),
                    ("loss first / last", f"{r['loss_first']:.4f} / {r['loss_last']:.4f}"),
                    (
                        "loader clips / s (all; after the first batch)",
                        (
                            f"{r['loader_clips_per_s']:.0f}; {_fmt(r['loader_clips_per_s_after_first_batch'], 0)} "
                            f"({r['loader_workers']} workers, {r['loader_clips']} clips)"
                        ),
                    ),
                    ("data failures", r["data_failures"]),
                    ("loader / step clips per s (>= 1: the loader keeps up)", r.get("loader_vs_step")),
                    (
                        "loader and step together: clips / s",
                        f"{_fmt(r.get('pipeline_clips_per_s'), 0)} ({r.get('pipeline_steps')} steps after the first)",
                    ),
                )
            ]
            sw = r.get("switches") or {}
            if sw:  # CUDA only
                graphs = (sw["cuda_graphs_error"] if "cuda_graphs_error" in sw else
                          f"{100 * sw['loss_share_cuda_graphs']:.2f}% ({sw['loss_ms_cuda_graphs']:.2f} ms; plain "
                          f"{100 * sw['loss_share_same_rounds']:.2f}% in the same rounds)")
                decode = sw.get("gpu_decode_error") or _fmt(
                    sw.get("gpu_decode_loader_clips_per_s_after_first_batch"), 0)
                lines += ["| --decode-device cuda: loader clips / s (after the first batch) | " + decode + " |",
                          "| --loss-cuda-graphs: loss share of a step | " + graphs + " |"]
            if r.get("warnings"):
                lines += ["", "Warnings: " + "; ".join(f"`{w}`" for w in r["warnings"])]
        elif rec.name == "kernels" and r.get("cases"):
            lines += ["", f"Relative errors `||x - y|| / ||y||`, worst of the value and both gradients (checks: eager "
                      f"vs float64 <= {r['eager_tol']:g}, compiled vs eager <= {r['compiled_tol']:g}); ms: one "
                      "forward + backward, median.", "",
                      "| case | B x C x H x W | eager vs f64 | compiled vs eager | compiled vs f64 | first call s | "
                      "eager ms | compiled ms | fallback / error |", "|:---|:---|---:|---:|---:|---:|---:|---:|:---|"]
            for c in r["cases"]:
                size = f"{c['B']}x{c['C']}x{c['H']}x{c['W']}"
                problem = c.get("error") or c.get("fallback") or ""
                lines.append(f"| {c['case']} | {size} | {c['eager_vs_float64']:.1e} | "
                             f"{_sci(c.get('compiled_vs_eager'))} | "
                             f"{_sci(c.get('compiled_vs_float64'))} | {_fmt(c.get('first_call_s'))} | "
                             f"{_fmt(c['eager_ms'])} | {_fmt(c.get('compiled_ms'))} | {problem} |")
            if "checks" in r:
                lines += ["", "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["checks"].items())]
        elif rec.name == "cuda_tests" and r.get("tests"):
            lines += ["", "| test | outcome | s | message |", "|:---|:---|---:|:---|"]
            lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.2f} | {t['message']} |" for t in r["tests"]]
            for t in r["tests"]:
                if t.get("details"):
                    lines += ["", f"{t['test']} ({t['outcome']}), last lines:", "", "```", *t["details"], "```"]
        elif r:
            shown = {k: v for k, v in r.items() if k not in ("checks", "losses", "train_step", "step_losses")}
            lines += ["", "```", json.dumps(shown, indent=1), "```"]
            if "checks" in r:
                lines += ["", "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["checks"].items())]
        if rec.output_tail:
            lines += ["", "Last output lines:", "", "```", *rec.output_tail, "```"]
        lines.append("")
    if bench_md:
        lines += ["## benchmarks.run tables", ""]
        lines += [("#" + line if line.startswith("#") else line) for line in bench_md.splitlines()]
        lines.append("")
    return "\n".join(lines)
