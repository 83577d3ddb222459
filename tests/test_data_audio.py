"""Audio front end: torch log spectrogram vs scipy.signal.spectrogram, crop/tile, wav loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

scipy_signal = pytest.importorskip("scipy.signal")
sf = pytest.importorskip("soundfile")

from marginnce_kit.data.audio import (  # noqa: E402
    CLIP_SAMPLES,
    center_crop,
    load_spectrogram,
    load_waveform,
    log_spectrogram,
    power_spectrogram,
    tukey_window,
)

FS = 16000


def scipy_log_spec(x: np.ndarray) -> np.ndarray:
    """The upstream recipe: scipy defaults, then log(S + 1e-7) / 12."""
    _, _, s = scipy_signal.spectrogram(x, FS, nperseg=512, noverlap=274)
    return np.log(s + 1e-7) / 12.0


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = np.arange(CLIP_SAMPLES) / FS
    chirp = np.sin(2 * np.pi * (100 + 3000 * t) * t)
    return {
        "noise": 0.1 * rng.standard_normal(CLIP_SAMPLES),
        "quiet_noise": 1e-4 * rng.standard_normal(CLIP_SAMPLES),
        "silence": np.zeros(CLIP_SAMPLES),
        "tone_440": 0.5 * np.sin(2 * np.pi * 440 * t),
        "tone_nyquist": np.cos(np.pi * np.arange(CLIP_SAMPLES)),  # +-1 alternating: all energy at 8 kHz
        "dc_offset": 0.3 + 0.01 * rng.standard_normal(CLIP_SAMPLES),
        "loud_clipped": np.clip(5 * rng.standard_normal(CLIP_SAMPLES), -1, 1),
        "square": np.sign(np.sin(2 * np.pi * 50 * t)),
        "chirp": chirp,
        "impulses": np.where(np.arange(CLIP_SAMPLES) % 4000 == 0, 1.0, 0.0),
    }


@pytest.mark.parametrize("length,alpha,periodic", [(512, 0.25, True), (512, 0.25, False), (100, 0.5, True),
                                                   (33, 1.0, False), (64, 0.1, True)])
def test_tukey_window_matches_scipy(length, alpha, periodic):
    ref = scipy_signal.windows.tukey(length, alpha, sym=not periodic)
    ours = tukey_window(length, alpha, periodic=periodic).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)
    if periodic and length == 512 and alpha == 0.25:
        np.testing.assert_allclose(ours, scipy_signal.get_window(("tukey", 0.25), 512), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", list(_signals()))
def test_log_spectrogram_matches_scipy(name):
    x = _signals()[name]
    ref = scipy_log_spec(x)
    assert ref.shape == (257, 200)
    out = log_spectrogram(torch.from_numpy(x))
    assert out.shape == (257, 200) and out.dtype == torch.float32
    assert np.abs(out.numpy().astype(np.float64) - ref).max() < 1e-4
    # float32 input (what a loader might hand over) is still within tolerance
    out32 = log_spectrogram(torch.from_numpy(x.astype(np.float32)))
    ref32 = scipy_log_spec(x.astype(np.float32).astype(np.float64))
    assert np.abs(out32.numpy().astype(np.float64) - ref32).max() < 1e-4


def test_power_spectrogram_matches_scipy_psd_relative():
    x = _signals()["noise"]
    _, _, ref = scipy_signal.spectrogram(x, FS, nperseg=512, noverlap=274)
    ours = power_spectrogram(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (257, 200)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)
    # one-sided doubling: DC and Nyquist rows are not doubled, the rest are
    _, _, two = scipy_signal.spectrogram(x, FS, nperseg=512, noverlap=274, return_onesided=False)
    np.testing.assert_allclose(ours[0], two[0], rtol=1e-9)
    np.testing.assert_allclose(ours[256], two[256], rtol=1e-9)
    np.testing.assert_allclose(ours[1:256], 2 * two[1:256], rtol=1e-9)


def test_batch_equals_rows():
    sig = _signals()
    x = np.stack([sig["noise"], sig["chirp"], sig["silence"]])
    batch = log_spectrogram(torch.from_numpy(x))
    assert batch.shape == (3, 257, 200)
    for i in range(3):
        assert torch.equal(batch[i], log_spectrogram(torch.from_numpy(x[i])))
        assert np.abs(batch[i].numpy() - scipy_log_spec(x[i])).max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(length=st.integers(512, 6000), amp=st.floats(1e-3, 1.0), seed=st.integers(0, 2**31 - 1))
def test_any_length_matches_scipy(length, amp, seed):
    x = amp * np.random.default_rng(seed).standard_normal(length)
    ref = scipy_log_spec(x)
    out = log_spectrogram(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (257, (length - 512) // 238 + 1)
    assert np.abs(out - ref).max() < 1e-4


def test_spectrogram_input_errors():
    with pytest.raises(TypeError, match="wave"):
        log_spectrogram(np.zeros(CLIP_SAMPLES))
    with pytest.raises(TypeError, match="floating"):
        log_spectrogram(torch.zeros(CLIP_SAMPLES, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\[T\] or \[N, T\]"):
        log_spectrogram(torch.zeros(1, 1, CLIP_SAMPLES))
    with pytest.raises(ValueError, match="at least 512"):
        log_spectrogram(torch.zeros(511))


def test_center_crop_long_and_short():
    x = np.arange(10.0)
    np.testing.assert_array_equal(center_crop(x, 4), [3, 4, 5, 6])  # start (10 - 4) // 2 = 3
    np.testing.assert_array_equal(center_crop(x, 5), [2, 3, 4, 5, 6])  # start (10 - 5) // 2 = 2
    np.testing.assert_array_equal(center_crop(x, 10), x)
    np.testing.assert_array_equal(center_crop(np.array([1.0, 2.0, 3.0]), 7), [1, 2, 3, 1, 2, 3, 1])
    t = center_crop(torch.tensor([1.0, 2.0]), 5)
    assert isinstance(t, torch.Tensor) and t.tolist() == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="1-D"):
        center_crop(np.zeros((2, 10)), 4)
    with pytest.raises(ValueError, match="empty"):
        center_crop(np.zeros(0), 4)


def _write(path, data, sr=FS, subtype="PCM_16"):
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def test_load_waveform_center_mono(tmp_path):
    n = 5 * FS
    left = np.linspace(-0.5, 0.5, n)
    right = np.full(n, 0.25)
    path = _write(tmp_path / "a.wav", np.stack([left, right], axis=1), subtype="DOUBLE")
    wave = load_waveform(path)
    assert wave.shape == (CLIP_SAMPLES,) and wave.dtype == np.float64
    start = (n - CLIP_SAMPLES) // 2
    np.testing.assert_allclose(wave, (left[start:start + CLIP_SAMPLES] + 0.25) / 2, atol=1e-12)


def test_load_waveform_int16_short_clip_is_tiled(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-20000, 20000, size=FS // 2, dtype=np.int16)  # 0.5 s
    path = _write(tmp_path / "short.wav", pcm)
    wave = load_waveform(path)
    expected = np.tile(pcm / 32768.0, 7)[:CLIP_SAMPLES]
    np.testing.assert_allclose(wave, expected, atol=0)


def test_load_waveform_clips_float_overrange(tmp_path):
    data = np.full(4 * FS, 1.5)
    path = _write(tmp_path / "loud.wav", data, subtype="FLOAT")
    assert np.all(load_waveform(path) == 1.0)


def test_load_waveform_rejects_other_sample_rate(tmp_path):
    path = _write(tmp_path / "r44.wav", np.zeros(44100), sr=44100)
    with pytest.raises(ValueError, match="44100 Hz, expected 16000 Hz"):
        load_waveform(path)


def test_load_spectrogram_pipeline_matches_scipy(tmp_path):
    rng = np.random.default_rng(5)
    pcm = rng.integers(-30000, 30000, size=7 * FS, dtype=np.int16)
    path = _write(tmp_path / "clip.wav", pcm)
    spec = load_spectrogram(path)
    assert spec.shape == (1, 257, 200) and spec.dtype == torch.float32
    start = (7 * FS - CLIP_SAMPLES) // 2
    ref = scipy_log_spec(pcm[start:start + CLIP_SAMPLES] / 32768.0)
    assert np.abs(spec[0].numpy() - ref).max() < 1e-4


# --------------------------------------------------------------------------- the acceptance rule's windowed read


@pytest.mark.parametrize("n", [FS, CLIP_SAMPLES - 1, CLIP_SAMPLES, CLIP_SAMPLES + 1, 10 * FS, 10 * FS + 7])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_U8"])
def test_windowed_read_equals_the_whole_read_cropped(tmp_path, n, subtype):
    """An integer-PCM WAV read by window gives the centred samples of the whole read, bit for bit,
    and the file's full length; the dataset's spectrogram is the same either way."""
    from marginnce_kit.data.acceptance import decode_audio, decode_audio_window

    pcm = np.random.default_rng(n).integers(-20000, 20000, size=n, dtype=np.int16)
    path = _write(tmp_path / "a.wav", pcm, subtype=subtype)
    whole, rate = decode_audio(path)
    window, rate_w, total = decode_audio_window(path, CLIP_SAMPLES)
    assert (rate_w, total) == (rate, n) and window.dtype == np.float64
    start = (n - CLIP_SAMPLES) // 2 if n > CLIP_SAMPLES else 0
    np.testing.assert_array_equal(window, whole[start:start + CLIP_SAMPLES])


def test_windowed_read_gives_the_whole_reads_verdict(tmp_path):
    """Too short, wrong rate, stereo: the same reasons as the whole read; a float file is read whole,
    so a NaN outside the window still rejects it."""
    from marginnce_kit.data.acceptance import ClipRejected, load_clip

    frame = tmp_path / "f.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(frame)
    cases = {
        "short": (np.zeros(FS // 2, dtype=np.int16), FS, "PCM_16"),
        "rate": (np.zeros(3 * FS, dtype=np.int16), 22050, "PCM_16"),
        "stereo": (np.zeros((10 * FS, 2), dtype=np.int16), FS, "PCM_16"),
        "nan": (np.concatenate([np.full(FS, np.nan), np.zeros(9 * FS)]), FS, "FLOAT"),
    }
    for name, (data, rate, subtype) in cases.items():
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), data, rate, subtype=subtype)
        reasons = []
        for window in (None, CLIP_SAMPLES):
            with pytest.raises(ClipRejected) as info:
                load_clip(frame, path, window=window)
            reasons.append(info.value.reason)
        assert reasons[0] == reasons[1], name
    with pytest.raises(ClipRejected, match=r"non-finite audio: 16000 NaN, 0 \+Inf, 0 -Inf values, the first at 0.000 s"):
        load_clip(frame, tmp_path / "nan.wav", window=CLIP_SAMPLES)
    with pytest.raises(ClipRejected, match=r"too short: 0.500 s of audio"):
        load_clip(frame, tmp_path / "short.wav", window=CLIP_SAMPLES)


def test_both_halves_broken_give_verifys_reason(tmp_path):
    """A clip whose frame and audio are both bad: the loader's reason lists both halves, word for word
    what ``prepare --verify`` prints (it stopped at the frame before)."""
    from PIL import Image

    from marginnce_kit.data.acceptance import ClipRejected, load_clip
    from marginnce_kit.layout import audio_path, frame_path
    from marginnce_kit.prepare.verify import verify_clip

    cases = {
        "garbage": (b"not an image", b"RIFF....WAVEfmt "),
        "sixteen_bit": (None, b"\x00" * 100),
    }
    for clip_id, (frame_bytes, audio_bytes) in cases.items():
        f, a = frame_path(tmp_path, clip_id), audio_path(tmp_path, clip_id)
        f.parent.mkdir(parents=True, exist_ok=True)
        a.parent.mkdir(parents=True, exist_ok=True)
        if frame_bytes is None:  # a 16-bit greyscale PNG named .jpg: decodes, but the mode is refused
            Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(f, format="PNG")
        else:
            f.write_bytes(frame_bytes)
        a.write_bytes(audio_bytes)
        with pytest.raises(ClipRejected) as info:
            load_clip(f, a, window=CLIP_SAMPLES)
        problems = verify_clip(tmp_path, clip_id)
        assert len(problems) == 2 and problems[1].startswith("audio does not decode: "), problems
        assert info.value.reason == "; ".join(problems)


@pytest.mark.parametrize("window, error", [(0, ValueError), (-1, ValueError), (48000.0, TypeError), (True, TypeError)])
def test_window_is_checked(tmp_path, window, error):
    from marginnce_kit.data.acceptance import load_clip

    path = _write(tmp_path / "a.wav", np.zeros(10 * FS, dtype=np.int16))
    with pytest.raises(error, match="window: expected an int"):
        load_clip(tmp_path / "no-frame.jpg", path, window=window)


def test_too_short_reason_never_reads_as_the_minimum():
    from marginnce_kit.data.acceptance import too_short_reason

    assert too_short_reason(8000, FS) == "too short: 0.500 s of audio, the minimum is 1 s"
    assert too_short_reason(FS - 1, FS) == "too short: 0.999938 s of audio, the minimum is 1 s"
