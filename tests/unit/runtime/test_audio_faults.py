"""Issue 13 item 14: hostile or damaged audio files, decoded for real (Python's wave reader and the
real ffmpeg), and transcripts written with the user's umask."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from whisper_release.consume.consumer import decode_audio, write_atomic
from whisper_release.core.errors import VerificationError
from whisper_release.runtime import audio
from whisper_release.testing import require_tool


def _wav_bytes(
    rate: int = 16000, n: int = 16000, *, riff_size: int | None = None, junk: bool = False
) -> bytes:
    """A mono 16-bit PCM WAV built by hand, so its header can lie; `junk` puts a LIST chunk first,
    as ffmpeg-written files have."""
    data = (np.sin(np.arange(n) / 10.0) * 10000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate & 0xFFFFFFFF, (rate * 2) & 0xFFFFFFFF, 2, 16)
    chunks = b""
    if junk:
        info = b"INFOISFT" + struct.pack("<I", 14) + b"Lavf58.76.100\0"
        chunks += b"LIST" + struct.pack("<I", len(info)) + info
    chunks += b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    body = b"WAVE" + chunks
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def test_riff_size_smaller_than_its_chunks_is_a_typed_error(tmp_path: Path) -> None:
    """Python's chunk reader raised a bare RuntimeError here, which skipped the ffmpeg fallback."""
    wav = tmp_path / "streamed.wav"
    wav.write_bytes(_wav_bytes(riff_size=20, junk=True))
    with pytest.raises(VerificationError, match="RIFF header whose size is smaller than its chunks"):
        audio.read_wav(wav)


def test_riff_size_smaller_than_its_chunks_falls_back_to_ffmpeg(tmp_path: Path) -> None:
    require_tool("ffmpeg", "decodes what the WAV reader cannot")
    wav = tmp_path / "streamed.wav"
    wav.write_bytes(_wav_bytes(riff_size=20, junk=True))
    samples = decode_audio(wav)
    assert samples.size == 16000  # one second at 16 kHz, all of it


@pytest.mark.parametrize("rate", [0xFFFFFFFF, 10_000_000, 10_000_001, 1])
def test_absurd_header_rates_are_refused_before_anything_is_allocated(tmp_path: Path, rate: int) -> None:
    """0xFFFFFFFF Hz asked numpy for a 317 GiB filter table (MemoryError), 10_000_001 Hz (prime to
    16 kHz) for a 4 GB one; 1 Hz would make 16000 samples of each one."""
    wav = tmp_path / "rate.wav"
    wav.write_bytes(_wav_bytes(rate=rate, n=100))
    want = f"declares a sample rate of {rate} Hz: wanted 4000 to 384000"
    with pytest.raises(VerificationError, match=want):
        audio.read_wav(wav)
    # Not handed to ffmpeg either, which trusts the same header.
    with pytest.raises(VerificationError, match=want):
        decode_audio(wav)


def _flac(tmp_path: Path) -> Path:
    ffmpeg = require_tool("ffmpeg", "makes and decodes the FLAC file")
    wav = tmp_path / "tone.wav"
    wav.write_bytes(_wav_bytes())
    flac = tmp_path / "tone.flac"
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", str(wav), str(flac)], check=True)
    return flac


@pytest.mark.parametrize("name", ["-", "concat:x", "pipe:0"])
def test_ffmpeg_reads_the_named_file_whatever_its_name(tmp_path: Path, name: str, monkeypatch) -> None:
    """`-` was stdin, `concat:x` the concat protocol over a file `x`, `pipe:0` stdin again."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(_flac(tmp_path), work / name)
    monkeypatch.chdir(work)
    # Stdin is /dev/null meanwhile, so a decoder that reads stdin instead of the file fails here
    # rather than waiting on a terminal.
    saved = os.dup(0)
    try:
        with open(os.devnull, "rb") as devnull:
            os.dup2(devnull.fileno(), 0)
        samples = decode_audio(name)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert samples.size == 16000


@pytest.mark.parametrize(("umask", "mode"), [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_transcripts_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        out = write_atomic(tmp_path / "out" / "speech.txt", "hello\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert out.read_text() == "hello\n"
    assert [p.name for p in out.parent.iterdir()] == ["speech.txt"]  # no temp file left behind
