"""What a run records besides its checkpoint: provenance, ``metrics.jsonl``, the per-epoch line,
``curves.png`` and TensorBoard scalars (see :mod:`marginnce_kit.train` for the run folder)."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..cli import UsageError
from ..io import atomic_write
from ..layout import RunLayout

__all__ = ["provenance", "log_record", "epoch_line", "plot_curves", "Scalars", "check_tensorboard"]


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


#: distributions whose versions a run records (frame and audio decoding, numerics)
DATA_LIBRARIES = ("numpy", "pillow", "soundfile", "av", "scipy")


def _library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in DATA_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(device: torch.device | None = None, world_size: int = 1) -> dict[str, Any]:
    """Which code and software ran: ``marginnce_loss`` (the package version), ``git_commit`` / ``git_dirty`` of the
    checkout holding this package
    (``None`` when it is not a git checkout, e.g. an installed copy, or git is missing; dirty = tracked
    files modified), ``python``, ``torch``, ``torchvision``, ``cuda`` / ``cudnn`` (``None`` without),
    ``device`` (the GPU's name or ``"cpu"``), ``world_size`` and ``libraries``: the installed versions of
    the packages that decode and compute the data (:data:`DATA_LIBRARIES`; ``None`` when absent) -- a
    run's numbers are bit-reproducible only where these match. Never raises."""
    root = Path(__file__).resolve().parents[2]  # the checkout (marginnce_kit/training/records.py)
    commit = dirty = None
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is not None and Path(top).resolve() == root:  # not an enclosing repository (a venv inside a checkout)
        commit = _git(["rev-parse", "HEAD"], root)
        status = _git(["status", "--porcelain", "--untracked-files=no"], root)
        dirty = None if status is None else bool(status)
    try:
        import torchvision

        tv: str | None = str(torchvision.__version__)  # plain str (torch's TorchVersion is a str subclass)
    except ImportError:
        tv = None
    name = "cpu"
    if device is not None and device.type == "cuda":
        name = str(torch.cuda.get_device_name(device))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    from marginnce_loss import __version__

    return {"marginnce_loss": __version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": str(torch.__version__), "torchvision": tv,
            "cuda": torch.version.cuda, "cudnn": cudnn, "device": name, "world_size": world_size,
            "libraries": _library_versions()}


def log_record(out: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``out/metrics.jsonl``."""
    with open(RunLayout(out).metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    loss = "n/a" if record["loss"] is None else f"{record['loss']:.4f}"
    line = (f"epoch {record['epoch']}/{epochs}  loss {loss}  lr {record['lr']:.3g}  {record['seconds']:.1f} s  "
            f"steps {record['steps']}  skipped {record['skipped_batches']}  failed clips {record['data_failures']}")
    if "eval" in record:
        e = record["eval"]
        line += f"  eval: cIoU {e['ciou']:.2f}  AUC {e['auc']:.2f}  (n = {e['n']})"
    return line


def plot_curves(history: Sequence[dict[str, Any]], path: Path, final_eval: dict[str, Any] | None = None,
                epochs: int | None = None, title: str = "") -> None:
    """Write the training curves to ``path`` (PNG, atomically): the epoch's mean training loss and, when
    any evaluation ran (``--eval-every``, the final one at epoch ``epochs``), cIoU and AUC (%) against
    the epoch. ``history``: the ``metrics.jsonl`` epoch records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["epoch"], r["loss"]) for r in history if r.get("loss") is not None]
    evals = [(r["epoch"], r["eval"]) for r in history if "eval" in r]
    if final_eval is not None:
        evals.append((epochs if epochs is not None else (history[-1]["epoch"] if history else 0), final_eval))
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11}):
        fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10.0 if evals else 5.5, 4.0), squeeze=False)
        ax = axes[0, 0]
        if points:
            ax.plot(*zip(*points), marker="o", color="tab:blue")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (epoch mean)")
        ax.set_title("loss")
        ax.grid(alpha=0.3)
        if evals:
            ax = axes[0, 1]
            xs = [e for e, _ in evals]
            ax.plot(xs, [r["ciou"] for _, r in evals], marker="o", label="cIoU", color="tab:green")
            ax.plot(xs, [r["auc"] for _, r in evals], marker="s", label="AUC", color="tab:orange")
            ax.set_xlabel("epoch")
            ax.set_ylabel("%")
            ax.set_title("test localisation")
            ax.legend()
            ax.grid(alpha=0.3)
        for a in axes.flat:
            a.xaxis.get_major_locator().set_params(integer=True)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120), suffix=".png")
        finally:
            plt.close(fig)


class Scalars:
    """TensorBoard logs in ``<out>/tensorboard`` (rank 0, with ``tensorboard=True``); otherwise inert: per-step loss,
    learning rate and gradient norm (``train/step_*``, against the optimiser step), per-epoch scalars (``train/*``,
    ``val/*``, ``eval/*``, ``mechanism/*``, against the epoch), the run's hyperparameters with its final metrics
    (``hparams``) and response maps over their frames at the final evaluation (``eval/maps``). Flushed after every
    epoch, so a run stopped by an error keeps what it logged."""

    def __init__(self, log_dir: Path | None, purge_step: int | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def step(self, global_step: int, loss: float, lr: float, grad_norm: float | None = None) -> None:
        """One optimiser step's ``train/step_loss``, ``train/step_lr`` and (when given) ``train/step_grad_norm``
        (the gradients' L2 norm before the step), against the 0-based global step."""
        if self.writer is None:
            return
        self.writer.add_scalar("train/step_loss", loss, global_step)
        self.writer.add_scalar("train/step_lr", lr, global_step)
        if grad_norm is not None:
            self.writer.add_scalar("train/step_grad_norm", grad_norm, global_step)

    def epoch(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["epoch"]
        if record["loss"] is not None:
            self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        self.writer.add_scalar("train/seconds", record["seconds"], step)
        self.writer.add_scalar("data/failed_clips", record["data_failures"], step)
        if "eval" in record:
            self.eval(record["eval"], step)
        for key in ("ciou", "auc", "mean_ciou"):
            if key in record.get("val", {}):
                self.writer.add_scalar(f"val/{key}", record["val"][key], step)
        for key, value in record.get("mechanism", {}).items():
            if value is not None:
                self.writer.add_scalar(f"mechanism/{key}", value, step)
        self.writer.flush()

    def eval(self, result: dict[str, Any], step: int, prefix: str = "eval") -> None:
        """An evaluation's ``<prefix>/ciou``, ``<prefix>/auc`` and ``<prefix>/mean_ciou`` at ``step`` (the epoch)."""
        if self.writer is None:
            return
        for key in ("ciou", "auc", "mean_ciou"):
            self.writer.add_scalar(f"{prefix}/{key}", result[key], step)
        self.writer.flush()

    def maps(self, overlays: Any, step: int, tag: str = "eval/maps") -> None:
        """uint8 overlays ``[N, H, W, 3]`` (:func:`marginnce_kit.overlays.overlay_maps`) as one image grid."""
        if self.writer is None:
            return
        self.writer.add_images(tag, overlays, step, dataformats="NHWC")
        self.writer.flush()

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings (scalars and strings) beside its final metrics, for TensorBoard's HPARAMS tab."""
        if self.writer is None:
            return
        hp = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        self.writer.add_hparams(hp, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--tensorboard needs the tensorboard package ({e})",
                         "pip install tensorboard (it is in the [kit] extra), or drop --tensorboard") from e


