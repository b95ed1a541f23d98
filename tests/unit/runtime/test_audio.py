"""audio: WAV decoding, downmix and band-limited resampling, on files written here."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_release.core.errors import VerificationError
from whisper_release.runtime import audio


def _write(path: Path, data: np.ndarray, rate: int, width: int = 2) -> Path:
    """data: (frames, channels) floats in [-1, 1)."""
    frames, channels = data.shape
    if width == 2:
        raw = np.round(data * 32767).astype("<i2").tobytes()
    elif width == 3:
        v = np.round(data * (2**23 - 1)).astype("<i4").reshape(-1)
        raw = np.stack([(v >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    else:
        raw = np.round(data * 127 + 128).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def _spectrum_peak(x: np.ndarray, rate: int) -> tuple[float, float]:
    core = x[1000:-1000]
    spec = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    freqs = np.fft.rfftfreq(len(core), 1 / rate)
    return float(freqs[spec.argmax()]), float(np.sqrt(np.mean(core.astype(np.float64) ** 2)))


def test_44k1_stereo_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left, right = _tone(1000, 44100, 2.0, 0.6), _tone(1000, 44100, 2.0, 0.2)
    wav = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100)
    x = audio.read_wav(wav)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 32000  # 2 s at 16 kHz
    peak, rms = _spectrum_peak(x, 16000)
    assert peak == pytest.approx(1000, abs=2)
    # Downmix is the mean of the channels: amplitude 0.4, RMS 0.4/sqrt(2).
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def test_resampler_passes_speech_band_and_rejects_aliases() -> None:
    passband = audio.resample(_tone(6000, 44100, 1.0), 44100, 16000)
    peak, rms = _spectrum_peak(passband, 16000)
    assert peak == pytest.approx(6000, abs=2)
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # 12 kHz is above the new Nyquist (8 kHz): a naive decimator would fold it to 4 kHz.
    alias = audio.resample(_tone(12000, 44100, 1.0), 44100, 16000)
    _, alias_rms = _spectrum_peak(alias, 16000)
    assert 20 * np.log10(alias_rms / (0.5 / np.sqrt(2))) < -60


def test_upsampling_keeps_the_tone() -> None:
    y = audio.resample(_tone(440, 8000, 1.0), 8000, 16000)
    assert len(y) == 16000
    peak, rms = _spectrum_peak(y, 16000)
    assert peak == pytest.approx(440, abs=2)
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_16k_mono_passes_through_exactly(tmp_path: Path) -> None:
    data = _tone(300, 16000, 0.5)
    x = audio.read_wav(_write(tmp_path / "m.wav", data[:, None], 16000))
    np.testing.assert_allclose(x, np.round(data * 32767) / 32768, atol=1e-6)


@pytest.mark.parametrize("width", [1, 3])
def test_other_sample_widths(tmp_path: Path, width: int) -> None:
    data = _tone(500, 16000, 0.5)
    x = audio.read_wav(_write(tmp_path / "w.wav", data[:, None], 16000, width))
    np.testing.assert_allclose(x, data, atol=2.0 / 2 ** (8 * width - 1) + 1e-6)


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    data = _tone(700, 16000, 0.25).astype(np.float32)
    audio.write_wav(tmp_path / "o.wav", data)
    np.testing.assert_allclose(audio.read_wav(tmp_path / "o.wav"), data, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"]  # no temp file left behind


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="does not exist"):
        audio.read_wav(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(VerificationError, match=r"junk\.wav is not a readable PCM WAV"):
        audio.read_wav(junk)
    empty = _write(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
    with pytest.raises(VerificationError, match="holds no samples"):
        audio.read_wav(empty)
