"""WAV in, float32 16 kHz mono out: what whisper_full expects.

Resampling is a polyphase Kaiser-windowed sinc (band-limited, so a 44.1 kHz recording does not
alias into the speech band when it drops to 16 kHz); numpy only.
"""

from __future__ import annotations

import math
import os
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from whisper_release.core.errors import VerificationError

SAMPLE_RATE = 16000
# Header rates outside this range are refused before anything is allocated: 0xFFFFFFFF Hz once
# asked the resampler for a 317 GiB filter table, and 1 Hz would make 16000 output samples of each
# input one. 4 kHz to 384 kHz covers telephone to studio recordings.
MIN_RATE, MAX_RATE = 4_000, 384_000


class SampleRateError(VerificationError):
    """The header's sample rate is outside MIN_RATE..MAX_RATE. Callers do not hand such a file to
    ffmpeg: it trusts the same header (a 1 Hz claim is upsampled 16000-fold in memory there too)."""


def read_wav(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a PCM WAV file to float32 mono in [-1, 1) at `sample_rate`."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise VerificationError(f"Audio file {path} does not exist; pass the path of a WAV file.") from None
    except (wave.Error, EOFError) as e:
        raise VerificationError(
            f"{path} is not a readable PCM WAV file ({e}); convert it with "
            f"`ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav`."
        ) from None
    except RuntimeError:
        # Python's chunk reader raises a bare RuntimeError when a chunk runs past the RIFF size in
        # the header (files written by streaming encoders); ffmpeg reads those, so callers fall back.
        raise VerificationError(
            f"{path} has a RIFF header whose size is smaller than its chunks, which this WAV reader cannot "
            f"follow; convert it with `ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav`."
        ) from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SampleRateError(
            f"{path} declares a sample rate of {rate} Hz: wanted {MIN_RATE} to {MAX_RATE} Hz; the header is "
            f"damaged or the file is not audio, re-export it as PCM WAV."
        )
    frames = len(raw) // (width * channels)
    if frames == 0:
        raise VerificationError(f"Audio file {path} holds no samples (wanted at least one frame of audio).")
    data = _pcm_to_float(raw[: frames * width * channels], width, path).reshape(frames, channels)
    mono = data.mean(axis=1, dtype=np.float64) if channels > 1 else data[:, 0].astype(np.float64)
    return resample(mono, rate, sample_rate)


def _pcm_to_float(raw: bytes, width: int, path: Path) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise VerificationError(f"{path} has {8 * width}-bit samples: wanted 8, 16, 24 or 32-bit integer PCM.")


@lru_cache(maxsize=8)
def _phase_table(up: int, down: int, zero_crossings: int, beta: float) -> tuple[np.ndarray, int]:
    """Filter taps for each of the `up` output phases; offsets run from -half+1 to +half."""
    cutoff = 0.97 * min(1.0, up / down)  # of the input Nyquist; keeps a little transition band
    half = math.ceil(zero_crossings / cutoff)
    offsets = np.arange(-half + 1, half + 1)
    phases = np.arange(up) / up
    tau = phases[:, None] - offsets[None, :]  # distance from each tap to the output instant
    # The Kaiser window evaluated at each (fractional) tap position.
    r = np.clip(tau / half, -1.0, 1.0)
    window = np.i0(beta * np.sqrt(1.0 - r * r)) / np.i0(beta)
    taps = cutoff * np.sinc(cutoff * tau) * window
    return taps.astype(np.float64), half


def resample(
    x: np.ndarray, rate_in: int, rate_out: int, *, zero_crossings: int = 24, beta: float = 8.0
) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by the rational factor rate_out/rate_in."""
    x = np.asarray(x, dtype=np.float64)
    if rate_in <= 0 or rate_out <= 0:
        raise VerificationError(f"Sample rates must be positive, got {rate_in} -> {rate_out}.")
    if rate_in == rate_out:
        return x.astype(np.float32)
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    taps, half = _phase_table(up, down, zero_crossings, beta)
    n_out = (len(x) * up) // down
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    out = np.empty(n_out, dtype=np.float64)
    offsets = np.arange(-half + 1, half + 1) + half  # into `padded`
    chunk = max(1, (1 << 22) // (2 * half))  # bounds the gather matrix to a few tens of MB
    for start in range(0, n_out, chunk):
        n = np.arange(start, min(n_out, start + chunk), dtype=np.int64)
        base, phase = np.divmod(n * down, up)
        out[start : start + len(n)] = np.einsum(
            "ij,ij->i", padded[base[:, None] + offsets[None, :]], taps[phase]
        )
    return out.astype(np.float32)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM, written to a temp file beside `path` and renamed into place."""
    path = Path(path)
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
