"""Audio rendering: each class's sound (harmonic tones in shaped noise) at the configured SNR."""

from __future__ import annotations

import math

import numpy as np

from ..._checks import check_int_in
from .config import _SPLIT_CODE, _STREAM_AUDIO, _STREAM_NOISY, SPLITS, EmbeddedConfig
from .plan import ClassPrototype, class_prototypes


def _white_spectrum(rng: np.random.Generator, m: int) -> np.ndarray:
    """rfft-domain white Gaussian noise (independent real / imaginary parts), ``[m]`` complex64."""
    z = rng.standard_normal((2, m), dtype=np.float32)
    return z[0] + np.complex64(1j) * z[1]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


def _class_source(proto: ClassPrototype, rng: np.random.Generator, sr: int, n: int, t: np.ndarray,
                  t32: np.ndarray, pitch_factor: float) -> np.ndarray:
    """One instance of class ``proto``'s sound before background noise (the first draws of an audio stream)."""
    f0 = proto.f0_hz * math.exp(float(np.clip(rng.normal(0.0, 0.02), -0.05, 0.05))) * pitch_factor
    fm_rate = proto.fm_rate_hz
    phi = 2.0 * math.pi * f0 * t
    if proto.fm_depth > 0:
        vibrato = np.cos(np.float32(2.0 * math.pi * fm_rate) * t32 + np.float32(rng.uniform(0, 2 * math.pi)))
        phi -= f0 * proto.fm_depth / fm_rate * vibrato
    phi = np.mod(phi, 2.0 * math.pi)  # reduced in float64 so that float32 h * phi stays accurate
    phi32 = phi.astype(np.float32)
    tone = np.zeros(n, dtype=np.float32)
    for h in range(1, proto.num_harmonics + 1):
        if h * f0 * (1.0 + proto.fm_depth) > 0.475 * sr:
            break
        tone += np.float32(proto.harmonic_decay ** (h - 1)) * np.sin(
            np.float32(h) * phi32 + np.float32(rng.uniform(0.0, 2.0 * math.pi))
        )
    f = np.fft.rfftfreq(n, 1.0 / sr)
    center = min(proto.noise_center_hz * rng.uniform(0.97, 1.03), 0.45 * sr)
    # the Gaussian band gain is < 1e-9 beyond 6.5 sigma: only those bins get noise
    half = 6.5 * proto.noise_bandwidth_hz / 2.0
    lo, hi = np.searchsorted(f, center - half), np.searchsorted(f, center + half)
    band_spec = np.zeros(f.size, dtype=np.complex64)
    band_gain = np.exp(-0.5 * ((f[lo:hi] - center) / (proto.noise_bandwidth_hz / 2.0)) ** 2)
    band_spec[lo:hi] = _white_spectrum(rng, hi - lo) * band_gain.astype(np.float32)
    band = np.fft.irfft(band_spec, n).astype(np.float32)
    source = tone / np.float32(_rms(tone)) + np.float32(proto.noise_level / _rms(band)) * band
    am_rate = proto.am_rate_hz * rng.uniform(0.9, 1.1)
    am_depth = rng.uniform(0.5, 0.9)
    am_phase = np.float32(rng.uniform(0.0, 2.0 * math.pi))
    source *= 1.0 - np.float32(am_depth * 0.5) * (1.0 - np.cos(np.float32(2.0 * math.pi * am_rate) * t32 + am_phase))
    return source


def render_audio(config: EmbeddedConfig, split: str, index: int, class_index: int, *, latent: float | None = None,
                 box_side: float | None = None, silent: bool = False, offscreen_class: int | None = None) -> np.ndarray:
    """The natural audio of clip ``(split, index)`` of class ``class_index``: float32 ``[num_samples]``.

    ``x = g * y / max|y|``, ``y = a(t) (tone / rms(tone) + 0.5 band / rms(band)) + noise`` with
    ``tone = sum_h d^(h-1) sin(h phi(t) + phi_h)``,
    ``phi(t) = 2 pi f0 (t - D / (2 pi r) cos(2 pi r t))`` (vibrato rate ``r``, depth ``D``),
    ``a(t) = 1 - m (1 - cos(2 pi am t + phi_a)) / 2`` (depth ``m ~ U(0.5, 0.9)``), the noise
    band white noise shaped by ``exp(-(f - c_k)^2 / (2 (bw / 2)^2))``, coloured background
    noise (spectral slope ``f^(-beta/2)``, ``beta ~ U(0, 1)``) scaled to
    ``rms(noise) = rms(source) 10^(-snr_db / 20)``, and peak level ``g ~ U(0.3, 0.8)``.
    Harmonics above 0.475 ``sample_rate`` are dropped.

    The regime knobs (:class:`EmbeddedConfig`): ``latent`` (``z``) and ``box_side`` (the sounding box's side
    ``sqrt(w h)`` as a fraction of the frame) of the clip the sound belongs to set its pitch and loudness under
    ``instance_coupling``; ``silent``: the sound is the background noise alone; ``offscreen_class``: that
    class's sound (its own stream) is added ``offscreen_db`` below the clip's own, before the noise.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_int_in("class_index", class_index, 0, config.num_classes - 1)
    classes = class_prototypes(config.num_classes)
    coupling = config.instance_coupling if latent is not None else 0.0
    rng = np.random.default_rng([config.seed, _STREAM_AUDIO, _SPLIT_CODE[split], index])
    sr, n = config.sample_rate, config.num_samples
    t = np.arange(n, dtype=np.float64) / sr
    t32 = t.astype(np.float32)  # slow oscillations (vibrato, AM: < 250 rad over 3 s) are exact enough in float32
    pitch = 2.0 ** (3.0 * coupling * latent / 12.0) if latent is not None and coupling > 0 else 1.0
    source = _class_source(classes[class_index], rng, sr, n, t, t32, pitch)
    if offscreen_class is not None:
        check_int_in("offscreen_class", offscreen_class, 0, config.num_classes - 1)
        other_rng = np.random.default_rng([config.seed, _STREAM_NOISY, _SPLIT_CODE[split], index])
        other = _class_source(classes[offscreen_class], other_rng, sr, n, t, t32, 1.0)
        source = source + np.float32(10.0 ** (config.offscreen_db / 20.0) * _rms(source) / _rms(other)) * other
    f = np.fft.rfftfreq(n, 1.0 / sr)
    beta = rng.uniform(0.0, 1.0)
    slope = (np.maximum(f, 20.0) ** (-beta / 2.0)).astype(np.float32)
    noise = np.fft.irfft(_white_spectrum(rng, f.size) * slope, n).astype(np.float32)
    noise *= np.float32(_rms(source) / _rms(noise) * 10.0 ** (-config.snr_db / 20.0))
    y = noise if silent else source + noise
    gain = rng.uniform(0.3, 0.8)
    if coupling > 0 and box_side is not None:
        gain = (1.0 - coupling) * gain + coupling * (0.3 + 0.5 * min(max(box_side, 0.0), 1.0))
    return (y * np.float32(gain / np.max(np.abs(y)))).astype(np.float32)
