"""Execution proof on emulated CPUs (Debian's qemu-user, `qemu-x86_64 -cpu MODEL`).

Under `-cpu Haswell` (AVX2+FMA, the floor) each artifact's primary model transcribes a short clip
and must give exactly the native run's text with the same settings. Under `-cpu SandyBridge` (AVX,
no AVX2) and `-cpu Nehalem` (no AVX) the console script must refuse with the binding's CpuError
(exit 9) and its sentence, never die of a signal. The CPU check reads CPUID, which the emulator
answers for the chosen model (its /proc/cpuinfo is the host's: FACTS.md, 2026-12-01).

Emulation is slow (every AVX2 instruction is interpreted), so the work is kept tiny: the first
second of jfk.wav, a 64-frame encoder window (50 frames are one second), 8 decoded tokens, 1 thread
(ggml's worker threads spin at barriers, which costs more than it gains under emulation). Timings
land in the report (`models.<m>.emulated`); none is asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, clean_env

from whisper_release.core.errors import CpuError
from whisper_release.layout.artifacts import load_metadata, primary_model_file
from whisper_release.testing import require_tool
from whisper_release.verify import wer

CLIP_SECONDS = 1
AUDIO_CTX = 64
MAX_TOKENS = 8
THREADS = 1
# Generous bounds for a refusal: a guard against a hang, not a speed claim.
REFUSAL_TIMEOUT = 120
TRANSCRIBE_TIMEOUT = 3600


@pytest.fixture(scope="session")
def qemu() -> str:
    return require_tool("qemu-x86_64", "Debian's qemu-user runs the artifacts on emulated CPU models")


@pytest.fixture(scope="session")
def short_clip(clips: list[wer.Clip], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first CLIP_SECONDS of the pinned sample (jfk.wav, the first clip), cut with the standard
    library."""
    src = clips[0].path
    out = tmp_path_factory.mktemp("emulated") / f"jfk-first-{CLIP_SECONDS}s.wav"
    with wave.open(str(src), "rb") as r:
        params = r.getparams()
        frames = r.readframes(CLIP_SECONDS * params.framerate)
    with wave.open(str(out), "wb") as w:
        w.setparams(params)
        w.writeframes(frames)
    return out


def _console_script() -> list[str]:
    """`whisper-release` as an interpreter command line: qemu-x86_64 runs ELF files, not scripts."""
    script = Path(sys.executable).parent / "whisper-release"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "whisper_release.cli"]


def _worker(prefix: list[str], artifact: Path, model: Path, clip: Path) -> tuple[dict[str, Any], float]:
    job = {
        "lib_dir": str(artifact),
        "required_flags": load_metadata(artifact)["required_cpu_flags"],
        "model": str(model),
        "threads": THREADS,
        "audio_ctx": AUDIO_CTX,
        "max_tokens": MAX_TOKENS,
        "clips": [{"name": clip.stem, "path": str(clip)}],
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [*prefix, sys.executable, str(HERE / "worker.py")],
        input=json.dumps(job),
        text=True,
        capture_output=True,
        env=clean_env(),
        timeout=TRANSCRIBE_TIMEOUT,
    )
    took = time.monotonic() - t0
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(
            f"{model} under {' '.join(prefix) or 'the native CPU'}: wanted a transcription, got {how}: "
            f"{proc.stdout[-500:]} {proc.stderr.strip()[-1500:]}",
            pytrace=False,
        )
    return json.loads(proc.stdout), took


def test_emulated_haswell_transcribes_like_native(
    artifact: Path, qemu: str, short_clip: Path, report: dict[str, Any]
) -> None:
    model = artifact / primary_model_file(load_metadata(artifact))
    native, t_native = _worker([], artifact, model, short_clip)
    emulated, t_emulated = _worker([qemu, "-cpu", "Haswell"], artifact, model, short_clip)
    text = {k: "".join(s[2] for s in v) for k, v in native["segments"].items()}
    text_emulated = {k: "".join(s[2] for s in v) for k, v in emulated["segments"].items()}
    report.setdefault("emulated", {})["Haswell"] = {
        "model_file": model.name,
        "clip_seconds": CLIP_SECONDS,
        "audio_ctx": AUDIO_CTX,
        "max_tokens": MAX_TOKENS,
        "threads": THREADS,
        "text_native": text,
        "text_emulated": text_emulated,
        "seconds_native": round(t_native, 1),
        "seconds_emulated": round(t_emulated, 1),
    }
    assert "".join(text.values()).strip(), f"{model}: the native run of {short_clip} gave no text"
    assert text_emulated == text, (
        f"{model}: wanted the native text {text} under qemu-x86_64 -cpu Haswell, got {text_emulated}"
    )


@pytest.mark.parametrize(
    ("cpu_model", "audio_kind"),
    [("SandyBridge", "clip"), ("Nehalem", "clip"), ("SandyBridge", "undecodable")],
)
def test_older_cpu_is_refused_with_the_cpu_error(
    artifact: Path,
    qemu: str,
    short_clip: Path,
    cpu_model: str,
    audio_kind: str,
    report: dict[str, Any],
    tmp_path: Path,
) -> None:
    # With bytes no decoder accepts, exit 9 (not 4) proves the CPU is checked before audio is decoded.
    clip = short_clip
    if audio_kind == "undecodable":
        clip = tmp_path / "not-audio.wav"
        clip.write_bytes(b"RIFF\xff\xff\xff\xffWAVEjunk" * 4)
    cmd = [qemu, "-cpu", cpu_model, *_console_script(), "transcribe", str(clip), "--artifact",
           str(artifact)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=clean_env(), timeout=REFUSAL_TIMEOUT
    )
    took = time.monotonic() - t0
    report.setdefault("emulated", {})[f"{cpu_model}-{audio_kind}"] = {
        "exit": proc.returncode,
        "seconds": round(took, 1),
    }
    err = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)
    where = " ".join(cmd)
    assert proc.returncode >= 0, f"{where}: killed by signal {-proc.returncode}, wanted CpuError:\n{err}"
    assert proc.returncode == CpuError.exit_code, (
        f"{' '.join(cmd)}: wanted exit {CpuError.exit_code} (CpuError), got {proc.returncode}:\n{err}"
    )
    assert re.search(r"error: This CPU lacks (avx, )?avx2, .*\(from CPUID\)", err), err
    assert not proc.stdout.strip(), f"a refused run printed a transcript: {proc.stdout!r}"


def test_the_emulator_really_hides_avx2(qemu: str) -> None:
    """Guards the refusal tests: they prove something only if the emulated CPU lacks AVX2."""
    code = "from whisper_release.runtime import cpu; print(' '.join(sorted(cpu.cpuid_flags())))"
    env = clean_env()
    seen = {}
    for model in ("Haswell", "SandyBridge", "Nehalem"):
        out = subprocess.run(
            [qemu, "-cpu", model, sys.executable, "-c", code],
            capture_output=True, text=True, env=env, timeout=REFUSAL_TIMEOUT, check=True,
        ).stdout.split()  # fmt: skip
        seen[model] = set(out)
    assert {"avx", "avx2", "fma", "f16c", "bmi2"} <= seen["Haswell"]
    assert "avx" in seen["SandyBridge"] and "avx2" not in seen["SandyBridge"]
    assert "avx" not in seen["Nehalem"] and "sse4_2" in seen["Nehalem"]
