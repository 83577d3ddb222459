"""Audio front end of the sound-source-localisation baselines (upstream EZ-VSL ``datasets.py@95ff5bf``).

Pipeline for one clip (``load_spectrogram``):

1. ``load_waveform``: read ``<root>/audio/<id>.wav`` with soundfile as float64 in
   [-1, 1] (int16 files are divided by 32768 by libsndfile; upstream EZ-VSL divides
   by 32767, a relative scale difference of 3e-5 that shifts the final log
   spectrogram by 2*log(32768/32767)/12 = 5e-6, far below any tolerance used here).
   The file must already be at ``SAMPLE_RATE`` (16 kHz, what the prepare step
   writes); any other rate is rejected with ``ValueError`` instead of being
   resampled silently.
2. Mono: the channels are averaged (``mean`` over channels, as upstream EZ-VSL
   which down-mixes to one channel and then averages); samples are clipped to
   [-1, 1] like upstream (only matters for float wav files).
3. ``center_crop``: the ``CLIP_SECONDS`` = 3 s (48,000 samples) centered in the clip,
   starting at sample ``(n - 48000) // 2``; a shorter clip is tiled
   (``[x, x, x, ...]``) from its first sample and cut to 48,000 samples.
4. ``log_spectrogram``: power spectral density exactly as
   ``scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=274)`` computes it
   with its defaults, then ``log(S + 1e-7) / 12`` -> ``[257, 200]``.

Everything after reading the file is torch (the spectrogram in float32 by default,
within 1e-5 of scipy's float64 on the log scale; float64 on request), so it runs on
any device and needs no scipy at run time; the test-suite compares it with scipy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SAMPLE_RATE",
    "CLIP_SECONDS",
    "CLIP_SAMPLES",
    "NPERSEG",
    "NOVERLAP",
    "TUKEY_ALPHA",
    "LOG_EPS",
    "LOG_SCALE",
    "N_FREQ",
    "N_FRAMES",
    "tukey_window",
    "power_spectrogram",
    "log_spectrogram",
    "center_crop",
    "load_waveform",
    "load_spectrogram",
    "waveform_from_samples",
]

SAMPLE_RATE: int = 16000
CLIP_SECONDS: float = 3.0
CLIP_SAMPLES: int = int(SAMPLE_RATE * CLIP_SECONDS)  # 48000
NPERSEG: int = 512
NOVERLAP: int = 274
HOP: int = NPERSEG - NOVERLAP  # 238
TUKEY_ALPHA: float = 0.25
LOG_EPS: float = 1e-7
LOG_SCALE: float = 12.0
N_FREQ: int = NPERSEG // 2 + 1  # 257
N_FRAMES: int = (CLIP_SAMPLES - NPERSEG) // HOP + 1  # 200


def tukey_window(
    length: int = NPERSEG,
    alpha: float = TUKEY_ALPHA,
    *,
    periodic: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Tukey (tapered cosine) window, shape ``[length]``.

    For a symmetric window of ``M`` points and ``n = 0..M-1``, with ``w = alpha (M-1) / 2``::

        0.5 (1 + cos(pi (n / w - 1)))               n <  w      (rising taper)
        1                                           w <= n <= M-1-w
        0.5 (1 + cos(pi ((M-1-n) / w - 1)))         n >  M-1-w  (falling taper)

    ``periodic=True`` (the default of ``scipy.signal.get_window``, used by
    ``scipy.signal.spectrogram``) builds the symmetric window of ``length + 1`` points
    and drops the last one.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    m = length + 1 if periodic else length
    if m == 1:
        return torch.ones(1, dtype=dtype, device=device)
    n = torch.arange(m, dtype=torch.float64, device=device)
    width = alpha * (m - 1) / 2.0
    w = torch.ones(m, dtype=torch.float64, device=device)
    rising = n < width
    falling = n > (m - 1) - width
    w[rising] = 0.5 * (1.0 + torch.cos(math.pi * (n[rising] / width - 1.0)))
    w[falling] = 0.5 * (1.0 + torch.cos(math.pi * (((m - 1) - n[falling]) / width - 1.0)))
    if periodic:
        w = w[:-1]
    return w.to(dtype)


def _check_wave(wave: torch.Tensor, name: str = "wave") -> None:
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(wave).__name__}")
    if not wave.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {wave.dtype}")
    if wave.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape [T] or [N, T], got {tuple(wave.shape)}")
    if wave.shape[-1] < NPERSEG:
        raise ValueError(
            f"{name} must have at least {NPERSEG} samples on its last axis, got {wave.shape[-1]}"
        )


def power_spectrogram(wave: torch.Tensor, fs: float = SAMPLE_RATE, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One-sided PSD, identical to ``scipy.signal.spectrogram(wave, fs, nperseg=512, noverlap=274)``.

    Segments ``x_k = wave[238 k : 238 k + 512]`` (no padding, incomplete tail
    dropped); each has its mean removed (``detrend='constant'``) and is multiplied by
    the periodic Tukey(0.25) window ``w``. With ``X_k = rfft(w * (x_k - mean x_k))``::

        S[f, k] = c_f |X_k[f]|^2 / (fs * sum(w^2)),   c_f = 1 for f = 0 and f = 256, else 2

    Args:
        wave: ``[T]`` or ``[N, T]`` floating tensor (T >= 512).
        fs: sampling rate in Hz (only enters the density scaling).
        dtype: precision of the computation and of the result: ``torch.float64`` (default; equal
            to scipy's to ~1e-15 relative) or ``torch.float32`` (the network input's precision).

    Returns:
        ``dtype`` tensor ``[257, F]`` or ``[N, 257, F]``, ``F = (T - 512) // 238 + 1``
        (``F = 200`` for 48,000 samples).

    Raises:
        TypeError / ValueError: ``wave`` is not a floating ``[T]`` / ``[N, T]`` tensor with
            ``T >= 512``, ``fs <= 0`` or ``dtype`` not float32 / float64.
    """
    _check_wave(wave)
    if not fs > 0:
        raise ValueError(f"fs must be positive, got {fs!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    x = wave.to(dtype)
    frames = x.unfold(-1, NPERSEG, HOP)  # [..., F, 512]
    window, scale = _window_and_scale(fs, x.device, dtype)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(frames * window, dim=-1)  # [..., F, 257]
    power = spectrum.real.square() + spectrum.imag.square()  # |X|^2
    power.mul_(scale)  # c_f / (fs * sum(w^2)): one-sided doubling except DC and Nyquist (nperseg even)
    return power.transpose(-1, -2)


_WINDOWS: dict[tuple[float, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _window_and_scale(fs: float, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The Tukey window ``[512]`` and the density/one-sided factors ``c_f / (fs sum w^2)`` ``[257]``
    of ``power_spectrogram`` (computed in float64, then cast to ``dtype``), built once per
    ``(fs, device, dtype)``."""
    key = (float(fs), str(device), dtype)
    hit = _WINDOWS.get(key)
    if hit is None:
        window = tukey_window(NPERSEG, TUKEY_ALPHA, device=device)
        scale = torch.full((N_FREQ,), 2.0, dtype=torch.float64, device=device)
        scale[0] = scale[-1] = 1.0
        scale = scale / (fs * window.square().sum())
        hit = _WINDOWS[key] = (window.to(dtype), scale.to(dtype))
    return hit


def log_spectrogram(wave: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Network input: ``log(S + 1e-7) / 12`` of the 16 kHz PSD (``power_spectrogram``).

    Args:
        wave: ``[T]`` or ``[N, T]`` floating tensor at 16 kHz (``T = 48000`` for the
            3 s protocol clip).
        dtype: precision of the computation (``power_spectrogram``'s ``dtype``). The default
            float32 is 1.6x faster than float64 and within 1e-5 of scipy's float64 result on this
            log scale (measured up to 4.5e-6, on a full-scale square wave; float64: 6e-8, the final
            cast; ``tests/test_data_audio.py`` and ``tests/test_data_loading.py`` check both).

    Returns:
        float32 tensor ``[257, F]`` or ``[N, 257, F]`` (``[257, 200]`` for 3 s).
    """
    power = power_spectrogram(wave, SAMPLE_RATE, dtype)
    return power.add_(LOG_EPS).log_().div_(LOG_SCALE).to(torch.float32)


def center_crop(wave: np.ndarray | torch.Tensor, length: int = CLIP_SAMPLES):
    """The ``length`` samples centered in a mono ``[n]`` signal, tiling it when shorter.

    ``n >= length``: ``wave[s : s + length]`` with ``s = (n - length) // 2``.
    ``n < length``: ``concat([wave] * ceil(length / n))[:length]``.
    Returns the same array type as given.
    """
    if not isinstance(wave, (np.ndarray, torch.Tensor)):
        raise TypeError(f"wave must be a numpy array or torch tensor, got {type(wave).__name__}")
    if wave.ndim != 1:
        raise ValueError(f"wave must be 1-D (mono) [n], got shape {tuple(wave.shape)}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    n = int(wave.shape[0])
    if n == 0:
        raise ValueError("wave is empty (0 samples); cannot take a clip from it")
    if n >= length:
        start = (n - length) // 2
        return wave[start : start + length]
    reps = -(-length // n)
    if isinstance(wave, np.ndarray):
        return np.tile(wave, reps)[:length]
    return wave.repeat(reps)[:length]




def waveform_from_samples(samples: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Steps 2 and 3 on decoded samples: clip to [-1, 1], average the channels, ``center_crop``.

    Args:
        samples: ``[n]`` or ``[n, channels]`` float array (n >= 1).
        length: output length in samples.

    Returns:
        float64 ``[length]``.

    Raises:
        ValueError: ``samples`` is empty or not 1-D / 2-D.
    """
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise ValueError(f"samples: expected shape [n] or [n, channels], got {tuple(data.shape)}")
    return center_crop(np.clip(data, -1.0, 1.0).mean(axis=1), length)


def load_waveform(
    path: str | Path,
    *,
    seconds: float = CLIP_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Read the centered ``seconds`` of a wav file as a mono float64 array ``[seconds * sample_rate]``.

    Only the needed frames are read for long files. Channels are averaged, values
    clipped to [-1, 1], short clips tiled (see ``center_crop``).  This reader checks only the
    sample rate; the dataset applies the full acceptance rule (``marginnce_kit.data.acceptance``:
    16 kHz, mono, >= 1 s, finite) through ``load_clip`` before ``waveform_from_samples``.

    Raises:
        ValueError: the file's sample rate is not ``sample_rate`` or it has no samples.
        soundfile.LibsndfileError / OSError: unreadable file.
    """
    import soundfile as sf  # optional dependency (kit extra)

    path = Path(path)
    info = sf.info(str(path))
    if info.samplerate != sample_rate:
        raise ValueError(
            f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
            "(resample when preparing the data; the loader does not resample)"
        )
    length = int(round(seconds * sample_rate))
    n = int(info.frames)
    if n <= 0:
        raise ValueError(f"{path}: audio file has no samples")
    start = max((n - length) // 2, 0)
    stop = min(start + length, n)
    data, _ = sf.read(str(path), start=start, stop=stop, dtype="float64", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"{path}: could not read any samples (header says {n} frames)")
    return waveform_from_samples(data, length)


def load_spectrogram(path: str | Path) -> torch.Tensor:
    """``log_spectrogram`` of the centered 3 s of ``path``, float32 ``[1, 257, 200]`` (channel first)."""
    wave = torch.from_numpy(load_waveform(path))
    return log_spectrogram(wave).unsqueeze(0)
