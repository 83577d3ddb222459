r"""Benchmark the training data loader against an upstream-style pipeline: ``python -m benchmarks.data_loading``.

Per-item cost of one worker (``num_workers=0``: ``dataset[i]`` in this process, one torch thread,
as a DataLoader worker runs), on VGGSound-like files written here: ``--clips`` center frames of
``640 x 360`` (written by ``marginnce_kit.prepare.save_frame``, as ``prepare`` writes them) with natural-image-like
content (smooth shading, texture, sharp edges, a letterbox bar, sensor noise) and 10 s 16 kHz
PCM-16 wavs.

Pipelines:

- ``upstream``: the EZ-VSL training item written the upstream way (our code from its description,
  EZ-VSL ``datasets.py`` @ 95ff5bf): ``PIL.Image.open -> convert("RGB") -> Resize(246, bicubic) ->
  RandomCrop(224) -> RandomHorizontalFlip -> ToTensor -> Normalize(ImageNet)``; audio: soundfile
  reads the centered 3 s (upstream seeks with PyAV and decodes 3 s), channels averaged, clipped,
  tiled when short, ``scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=274)``,
  ``log(S + 1e-7)``, ``ToTensor``, ``Normalize(0, 12)``.
- ``ours (full frames)``: ``marginnce_kit.data.AudioVisualDataset(split="train")`` on the same files, as
  shipped: it also applies the acceptance rule (``marginnce_kit.data.acceptance``), which decodes the
  whole wav (10 s) to look for non-finite samples; upstream reads the 3 s it uses.
- ``ours (stored 246)``: the same dataset on frames stored by ``prepare --frame-size 246`` (the
  shorter side already 246, the size the training transform resizes to), made here from the same
  source pixels with ``marginnce_kit.prepare.save_frame`` (what ``prepare`` writes); the dataset then
  skips the resize.

Timing: rounds of ``--items`` items per pipeline, the pipelines interleaved in one process in a
rotating order; a ratio is the median over rounds of the per-round ratios (machine noise common to
a round cancels). The load average before and after is recorded.

Outputs (checked before timing, on every clip): for the same crop position and flip, the
normalised image of each of our pipelines against upstream's (max and mean absolute difference in
normalised units, and in grey levels), and the spectrogram against upstream's (max absolute
difference).

Writes ``benchmarks/results/data-loading-<cpu>.json`` and ``.md`` (``--out``, ``--name``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .machine import device_name, write_results

RESULTS = Path(__file__).resolve().parent / "results"
FRAME_W, FRAME_H = 640, 360
AUDIO_SECONDS = 10.0
SAMPLE_RATE = 16000
JPEG_QUALITY = 95
IMAGE_SIZE = 224
STORED_SHORT_SIDE = int(IMAGE_SIZE * 1.1)  # 246
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- data
def video_like_frame(rng: np.random.Generator, height: int = FRAME_H, width: int = FRAME_W) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 frame with the ingredients of a video frame: smooth shading,
    fine texture, a few hard-edged objects, a black letterbox bar, sensor noise, 4:2:0 chroma."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.03), rng.uniform(0, 2 * np.pi)
        img[..., c] = 110 + 70 * np.sin(fx * xx + ph) * np.cos(fy * yy - ph)
        img[..., c] += 15 * np.sin(rng.uniform(0.3, 0.9) * xx + rng.uniform(0.2, 0.8) * yy)  # texture
    for _ in range(int(rng.integers(3, 7))):  # hard-edged objects
        w, h = int(rng.integers(width // 16 + 1, width // 3 + 2)), int(rng.integers(height // 16 + 1, height // 3 + 2))
        x0, y0 = int(rng.integers(0, max(width - w, 1))), int(rng.integers(0, max(height - h, 1)))
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
    bar = int(rng.integers(0, height // 8))
    img[:bar] = 0.0
    img[height - bar:] = 0.0
    img += rng.normal(0.0, 4.0, img.shape)
    return chroma_420(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def chroma_420(frame: np.ndarray) -> np.ndarray:
    """What a video decoder hands over: the frame's chroma (Cb, Cr) at half resolution in both axes
    (4:2:0, as H.264 stores it), upsampled back (bilinear) and converted to RGB."""
    from PIL import Image

    ycc = Image.fromarray(frame).convert("YCbCr")
    y, cb, cr = ycc.split()
    half = (frame.shape[1] // 2, frame.shape[0] // 2)
    cb, cr = (c.resize(half, Image.Resampling.BOX).resize(y.size, Image.Resampling.BILINEAR) for c in (cb, cr))
    return np.asarray(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"))


def make_clips(root: Path, n: int, seed: int = 0, stored_short_side: int | None = None) -> list[str]:
    """Write ``n`` clips ``root/frames/<id>.jpg`` (640 x 360, quality 95) + ``root/audio/<id>.wav``
    (10 s, 16 kHz, PCM-16) and the frame's pixels before JPEG ``root/source/<id>.npy``; with
    ``stored_short_side`` also ``root/small/frames/<id>.jpg``: the same
    source pixels stored as ``prepare --frame-size`` stores them (audio files linked)."""
    import soundfile as sf

    from marginnce_kit.prepare import save_frame

    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "source").mkdir(parents=True, exist_ok=True)
    if stored_short_side is not None:
        (root / "small" / "frames").mkdir(parents=True, exist_ok=True)
        (root / "small" / "audio").mkdir(parents=True, exist_ok=True)
    ids = [f"clip{i:05d}_{i:06d}" for i in range(n)]
    t = np.arange(int(AUDIO_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    for clip_id in ids:
        frame = video_like_frame(rng)
        np.save(root / "source" / f"{clip_id}.npy", frame)
        save_frame(frame, root / "frames" / f"{clip_id}.jpg")
        f0 = rng.uniform(100, 3000)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t))
        wave += 0.05 * rng.standard_normal(t.size)
        wav = root / "audio" / f"{clip_id}.wav"
        sf.write(str(wav), np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        if stored_short_side is not None:
            save_frame(frame, root / "small" / "frames" / f"{clip_id}.jpg", stored_short_side)
            os.link(wav, root / "small" / "audio" / f"{clip_id}.wav")
    return ids


# --------------------------------------------------------------------------- upstream-style pipeline
class UpstreamStyle:
    """The EZ-VSL training item, written the upstream way (see the module doc); ``item(path_jpg, path_wav)``."""

    def __init__(self, image_size: int = IMAGE_SIZE) -> None:
        from torchvision import transforms

        self.resize = transforms.Resize(int(image_size * 1.1), transforms.InterpolationMode.BICUBIC)
        self.image_transform = transforms.Compose([
            self.resize,
            transforms.RandomCrop((image_size, image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
        self.audio_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.0], std=[12.0])])

    @staticmethod
    def load_image(path):
        from PIL import Image

        return Image.open(path).convert("RGB")

    @staticmethod
    def log_spectrogram(path, dur: float = 3.0) -> np.ndarray:
        import soundfile as sf
        from scipy import signal

        info = sf.info(str(path))
        n, rate = info.frames, info.samplerate
        length = int(rate * dur)
        start = max((n - length) // 2, 0)
        audio, _ = sf.read(str(path), start=start, stop=min(start + length, n), dtype="float64", always_2d=True)
        audio = np.clip(audio.T, -1.0, 1.0).mean(0)
        if audio.shape[0] < length:
            audio = np.tile(audio, int(length / audio.shape[0]) + 1)
        audio = audio[:length]
        _, _, spectrogram = signal.spectrogram(audio, rate, nperseg=512, noverlap=274)
        return np.log(spectrogram + 1e-7)

    def item(self, image_path, audio_path) -> dict:
        image = self.image_transform(self.load_image(image_path))
        spectrogram = self.audio_transform(self.log_spectrogram(audio_path))
        return {"image": image, "spectrogram": spectrogram}


# --------------------------------------------------------------------------- output check
def _image_stats(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = (ours - ref).abs()
    grey = diff * torch.tensor(STD)[:, None, None] * 255.0
    return {"max": float(diff.max()), "sum": float(diff.sum()), "n": diff.numel(),
            "grey_max": float(grey.max()), "over_1": float((grey > 1.5).sum())}


def compare_outputs(root: Path, ids: Sequence[str], small_root: Path | None) -> dict[str, dict]:
    """Image and spectrogram differences, on every clip, for the crop and flip our dataset draws.

    Images: each of our pipelines against upstream's (its resize of the stored full frame, cropped
    the same way), and every pipeline, upstream's included, against the source frame (the pixels
    before JPEG storage, ``root/source/<id>.npy``) resized by Pillow the same way: the error that
    storing the frame as a JPEG costs. Spectrograms: against upstream's."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from marginnce_kit.data import AudioVisualDataset

    up = UpstreamStyle()
    datasets = {"ours (full frames)": AudioVisualDataset(root, list(ids), split="train")}
    if small_root is not None:
        datasets["ours (stored 246)"] = AudioVisualDataset(small_root, list(ids), split="train")
    for ds in datasets.values():
        ds.set_epoch(0, 0)
    acc: dict[str, dict[str, dict[str, float]]] = {}
    spec_max: dict[str, float] = {k: 0.0 for k in datasets}

    def add(pipeline: str, against: str, st: dict[str, float]) -> None:
        empty = {"max": 0.0, "sum": 0.0, "n": 0, "grey_max": 0.0, "over_1": 0.0}
        a = acc.setdefault(pipeline, {}).setdefault(against, empty)
        for k in ("sum", "n", "over_1"):
            a[k] += st[k]
        for k in ("max", "grey_max"):
            a[k] = max(a[k], st[k])

    def crop(image, top: int, left: int, flip: bool) -> torch.Tensor:
        c = TF.crop(image, top, left, IMAGE_SIZE, IMAGE_SIZE)
        return TF.normalize(TF.to_tensor(TF.hflip(c) if flip else c), MEAN, STD)

    for clip_id in ids:
        first = datasets["ours (full frames)"]
        g = first.generator(clip_id)
        h, w = first._decoded(clip_id)[0].shape[-2:]
        top = int(torch.randint(0, h - IMAGE_SIZE + 1, (1,), generator=g))
        left = int(torch.randint(0, w - IMAGE_SIZE + 1, (1,), generator=g))
        flip = torch.rand(1, generator=g).item() < 0.5
        up_resized = up.resize(up.load_image(root / "frames" / f"{clip_id}.jpg"))
        src_resized = up.resize(Image.fromarray(np.load(root / "source" / f"{clip_id}.npy")))
        assert up_resized.size == src_resized.size == (w, h), (up_resized.size, (w, h))
        ref_up, ref_src = crop(up_resized, top, left, flip), crop(src_resized, top, left, flip)
        add("upstream", "source", _image_stats(ref_up, ref_src))
        ref_spec = up.audio_transform(up.log_spectrogram(root / "audio" / f"{clip_id}.wav"))
        for name, ds in datasets.items():
            item = ds[ds.ids.index(clip_id)]
            if not isinstance(item, dict):  # a FailedSample: the comparison needs every clip
                raise RuntimeError(f"clip {clip_id!r} failed to load in {name!r}: {item.reason}")
            add(name, "upstream", _image_stats(item["image"], ref_up))
            add(name, "source", _image_stats(item["image"], ref_src))
            spec_max[name] = max(spec_max[name], float((item["spectrogram"].double() - ref_spec).abs().max()))
    out: dict[str, dict] = {}
    for pipeline, by in acc.items():
        out[pipeline] = {"clips": len(ids)}
        for against, a in by.items():
            out[pipeline][f"image_vs_{against}"] = {
                "max_abs": a["max"], "mean_abs": a["sum"] / a["n"], "max_grey_levels": round(a["grey_max"], 3),
                "fraction_over_1_grey_level": a["over_1"] / a["n"],
            }
        if pipeline in spec_max:
            out[pipeline]["spectrogram_vs_upstream_max_abs"] = spec_max[pipeline]
    return out


# --------------------------------------------------------------------------- timing
def time_pipelines(pipelines: dict[str, Callable[[int], object]], n_items: int, n_clips: int, rounds: int,
                   log: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds per item of each pipeline, per round; items ``i % n_clips``, the order rotated per round."""
    names = list(pipelines)
    for f in pipelines.values():  # warm-up: imports, caches, page cache
        for i in range(min(n_clips, 4)):
            f(i)
    per_round: dict[str, list[float]] = {k: [] for k in names}
    pos = 0
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            f = pipelines[name]
            t0 = time.perf_counter()
            for k in range(n_items):
                f((pos + k) % n_clips)
            per_round[name].append((time.perf_counter() - t0) / n_items)
        pos += n_items
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {1 / v[-1]:.0f} clips/s" for k, v in per_round.items()))
    return per_round


def cpu_name() -> str:
    return device_name(torch.device("cpu"))


def markdown(meta: dict, rows: list[dict], outputs: dict[str, dict]) -> str:
    lines = [
        f"# Data loading, one worker: {meta['device']}",
        "",
        f"`{meta['command']}` -- {meta['date']}, torch {meta['torch']}, {meta['threads']} torch thread(s), "
        f"{meta['clips']} VGGSound-like clips ({meta['frame']} JPEG q{JPEG_QUALITY} center frames, "
        f"{meta['audio']}), {meta['rounds']} rounds x {meta['items']} items, "
        f"load average {meta['load_before']} before, {meta['load_after']} after.",
        "",
        "Per-item cost of `dataset[i]` (train split: decode, resize, random crop + flip, normalise; centered 3 s "
        "log spectrogram). Ratio: median over rounds of the per-round ratio to upstream (interleaved in one "
        "process); range: min-max of the per-round ratios.",
        "",
        "| pipeline | clips/s (median) | ms / clip | x upstream | range |",
        "|:---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {r['clips_per_s']:.0f} | {r['ms_per_clip']:.2f} | {r['ratio']:.2f} | "
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} |"
        )
    lines += [
        "",
        "Outputs, every clip, the crop and flip our dataset draws (image: normalised units; grey levels = "
        "difference x std x 255; mean: mean absolute difference). `vs source`: against the frame's pixels "
        "before JPEG storage, resized by Pillow the same way -- what storing a JPEG costs, upstream included. "
        "Spectrogram: `log(S + 1e-7) / 12` units, against upstream's.",
        "",
        "| pipeline | image vs upstream: max abs (grey levels) | mean abs | pixels > 1 grey level "
        "| image vs source: max abs (grey levels) | mean abs | spectrogram vs upstream: max abs |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, o in outputs.items():
        cells = []
        for against in ("upstream", "source"):
            d = o.get(f"image_vs_{against}")
            cells += (["-", "-"] if d is None else
                      [f"{d['max_abs']:.4f} ({d['max_grey_levels']:.0f})", f"{d['mean_abs']:.2e}"])
            if against == "upstream":
                cells.append("-" if d is None else f"{100 * d['fraction_over_1_grey_level']:.2g}%")
        spec = o.get("spectrogram_vs_upstream_max_abs")
        cells.append("-" if spec is None else f"{spec:.1e}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_loading", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64, help="clips written (default 64)")
    p.add_argument("--items", type=int, default=50, help="items per pipeline per round (default 50)")
    p.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a DataLoader worker)")
    p.add_argument("--no-small", action="store_true", help="skip the stored-246 frames pipeline")
    p.add_argument("--data", type=Path, default=None, help="directory for the clips (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--name", default=None, help="results file stem (default: data-loading-<cpu>)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    for name in ("clips", "items", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}: expected an int >= 1, got {getattr(args, name)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.data is not None:
            return _main(args, argv, args.data)
        with tempfile.TemporaryDirectory(prefix="data-loading-") as tmp:
            return _main(args, argv, Path(tmp))
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: Sequence[str] | None, root: Path) -> dict:
    from marginnce_kit.data import AudioVisualDataset

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    command = "python -m benchmarks.data_loading" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None else sys.argv[1:]))
    meta = {
        "device": cpu_name(),
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "clips": args.clips,
        "items": args.items,
        "rounds": args.rounds,
        "frame": f"{FRAME_W}x{FRAME_H}",
        "audio": f"{AUDIO_SECONDS:g} s {SAMPLE_RATE} Hz PCM-16 wav",
        "load_before": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    small = not args.no_small
    ids = make_clips(root, args.clips, stored_short_side=STORED_SHORT_SIDE if small else None)
    small_root = root / "small" if small else None
    log(f"wrote {len(ids)} clips under {root}")
    outputs = compare_outputs(root, ids, small_root)
    for k, v in outputs.items():
        log(f"outputs {k}: {v}")

    up = UpstreamStyle()
    ours = AudioVisualDataset(root, ids, split="train")
    ours.set_epoch(0, 0)
    pipelines: dict[str, Callable[[int], object]] = {
        "upstream": lambda i: up.item(root / "frames" / f"{ids[i]}.jpg", root / "audio" / f"{ids[i]}.wav"),
        "ours (full frames)": ours.__getitem__,
    }
    if small_root is not None:
        ours_small = AudioVisualDataset(small_root, ids, split="train")
        ours_small.set_epoch(0, 0)
        pipelines["ours (stored 246)"] = ours_small.__getitem__
    per_round = time_pipelines(pipelines, args.items, len(ids), args.rounds, log)
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    base = per_round["upstream"]
    rows = []
    for name, secs in per_round.items():
        ratios = [b / s for b, s in zip(base, secs)]
        med = statistics.median(secs)
        rows.append({
            "pipeline": name,
            "clips_per_s": 1.0 / med,
            "ms_per_clip": 1e3 * med,
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "seconds_per_item_rounds": secs,
        })
    result = {"meta": meta, "pipelines": rows, "outputs": outputs}
    report = markdown(meta, rows, outputs)
    write_results(args.out, args.name or f"data-loading-{meta['device']}", result, report)
    print(report)
    return result


if __name__ == "__main__":
    main()
