"""Runtime CPU modules: which libggml-cpu-<variant>.so a process runs, and the proof it runs here.

An artifact built with several `[build] cpu_variants` ships one ggml CPU module per variant
(artifact.json `cpu_variants`, the floor first) and links none into libggml, so before whisper.cpp
can run, the binding registers exactly one of them with ggml (`ggml_backend_load`):

1. Candidates are the variants whose CPU flags this CPU has, read with CPUID and XGETBV in this
   process (an emulated CPU answers for itself; the OS must have enabled the AVX-512 / AMX register
   state, which ggml's own score does not check), best first by ggml's score (cpu-feats.cpp).
2. A module above the floor runs only after it passed a self-test: a child process registers that
   module alone and transcribes one second of generated audio with every model file of the artifact
   (a small window, two tokens). A child that dies by a signal or fails is a skipped module, with
   the reason logged, and the next candidate is tried: ggml 1.8.5's AMX module dies by SIGILL on
   q8_0 models on some hosts (docs/performance.md), and a dispatcher trusting CPUID alone would
   pick it there. Verdicts are cached per module (its sha256), model files (artifact.json's sha256s)
   and CPU (`selftest_key`).
3. The floor is proven by the ISA audit and the emulated-CPU runs of `nox -s verify`; it is never
   self-tested, and it is the last resort.

ggml's `ggml_backend_load_all_from_path` scores the same modules the same way but loads the best
by CPUID alone, so it is not called. `WHISPER_RELEASE_CPU_MODULE=<variant>` forces a module; a
forced module the CPU lacks the flags for, or one failing its self-test, is an error, not a fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisper_release.core import settings
from whisper_release.core.console import info
from whisper_release.core.errors import CpuError
from whisper_release.core.paths import cache_root
from whisper_release.layout.artifacts import CPU_FLOOR, METADATA, sha256_file
from whisper_release.runtime import cpu

FORCE = "WHISPER_RELEASE_CPU_MODULE"
# ggml_backend_cpu_x86_score (ggml/src/ggml-cpu/arch/x86/cpu-feats.cpp, v1.8.5): 1 plus these
# weights for each feature a module was built with; a module needing a feature the CPU lacks scores 0.
SCORE_WEIGHTS: dict[str, int] = {
    "fma": 1, "f16c": 1 << 1, "sse4_2": 1 << 2, "bmi2": 1 << 3, "avx": 1 << 4, "avx2": 1 << 5,
    "avx_vnni": 1 << 6, "avx512f": 1 << 7, "avx512vbmi": 1 << 8, "avx512_bf16": 1 << 9,
    "avx512_vnni": 1 << 10, "amx_int8": 1 << 11,
}  # fmt: skip
# The self-test: one second of audio, an 64-frame window and two tokens per model file. Generous
# timeout: a healthy run takes about a second per model file; a hung module is a failed one.
SELFTEST_SECONDS = 1.0
SELFTEST_AUDIO_CTX = 64
SELFTEST_TOKENS = 2
SELFTEST_TIMEOUT_S = 120.0
# Bump when the self-test's work changes, so cached verdicts of the old test are not reused.
SELFTEST_VERSION = "1"


@dataclass(frozen=True)
class Variant:
    name: str
    library: str
    cpu_flags: tuple[str, ...]

    @property
    def score(self) -> int:
        return 1 + sum(SCORE_WEIGHTS.get(f, 0) for f in set(self.cpu_flags))


@dataclass
class Choice:
    """The CPU module a process runs, and why the better ones were not chosen."""

    dispatch: str  # "linked" (single-ISA build) or "runtime"
    variant: str
    library: str
    score: int
    forced: bool = False
    # variant -> reason it was not chosen (CPU lacks flags, or its self-test failed)
    skipped: dict[str, str] = field(default_factory=dict)
    # variant -> "passed" / "failed: ..." / "cached: ..." for the self-tests this choice relied on
    selftests: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        how = (
            "linked in (single-ISA build)"
            if self.dispatch == "linked"
            else ("forced by " + FORCE if self.forced else "chosen at load time")
        )
        out = f"{self.variant} ({self.library}, score {self.score}, {how})"
        if self.skipped:
            out += "; skipped: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
        return out


def variants_of(meta: Mapping[str, Any]) -> list[Variant]:
    """artifact.json `cpu_variants` (absent in artifacts of before runtime modules: the linked floor)."""
    entries = meta.get("cpu_variants") or []
    return [
        Variant(str(v["name"]), str(v["library"]), tuple(str(f) for f in v["cpu_flags"])) for v in entries
    ]


def read_metadata(lib_dir: Path) -> dict[str, Any]:
    path = lib_dir / METADATA
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise CpuError(f"{path} is not valid JSON ({e}); pull the artifact again.") from None
    return meta


def cpu_signature(flags: Iterable[str]) -> str:
    """What a self-test verdict depends on besides the files: the CPU's identity and usable flags."""
    brand = (
        b"".join(
            cpu.cpuid(leaf)[reg].to_bytes(4, "little")
            for leaf in (0x80000002, 0x80000003, 0x80000004)
            for reg in ("eax", "ebx", "ecx", "edx")
        )
        if cpu.cpuid(0x80000000)["eax"] >= 0x80000004
        else b""
    )
    family = cpu.cpuid(1)["eax"]
    text = (
        f"{brand.rstrip(bytes(1)).decode('ascii', 'replace').strip()}|{family:#x}|{','.join(sorted(flags))}"
    )
    return text


def model_digests(lib_dir: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """Each model file of the artifact -> its sha256 as artifact.json states it (pull and transcribe
    check the bytes against it before any load), hashed here only where the file states none: a load
    must not re-read a few hundred MB of weights to find its cached verdict."""
    out = {}
    for f in meta.get("model_files", []):
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            out[f["name"]] = str(f.get("sha256") or sha256_file(lib_dir / f["name"]))
    return out


def selftest_key(lib_dir: Path, variant: Variant, models: Mapping[str, str], signature: str) -> str:
    h = hashlib.sha256()
    for part in (
        SELFTEST_VERSION,
        signature,
        sha256_file(lib_dir / variant.library),  # the code that runs: about 1 MB, always hashed
        *(f"{m}:{digest}" for m, digest in sorted(models.items())),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _verdict_dir() -> Path:
    return cache_root() / "cpu-selftest"


def run_selftest(lib_dir: Path, variant: Variant, model_files: Sequence[str]) -> str | None:
    """None when `variant` transcribes with every model file in a child process, else the reason."""
    cmd = [sys.executable, "-m", "whisper_release.runtime.selftest", str(lib_dir), variant.name, *model_files]
    env = {k: v for k, v in os.environ.items() if k != FORCE}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return f"self-test did not finish within {SELFTEST_TIMEOUT_S:g} s"
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"self-test died by {name} ({last})"
    return f"self-test failed with exit code {proc.returncode} ({last})"


def cached_selftest(
    lib_dir: Path,
    variant: Variant,
    models: Mapping[str, str],
    signature: str,
    runner: Callable[[Path, Variant, Sequence[str]], str | None] = run_selftest,
) -> tuple[str | None, str]:
    """(failure reason or None, how it was known): from the verdict cache, else a fresh self-test."""
    key = selftest_key(lib_dir, variant, models, signature)
    path = _verdict_dir() / f"{key}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        reason = cached.get("failure")
        return (str(reason) if reason else None), "cached"
    except (OSError, ValueError, AttributeError):
        pass
    reason = runner(lib_dir, variant, list(models))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"variant": variant.name, "failure": reason, "cpu": signature}), "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache costs a self-test per process, nothing else
    return reason, "run"


def choose(
    lib_dir: Path,
    meta: Mapping[str, Any],
    *,
    flags: set[str] | None = None,
    forced: str | None = None,
    runner: Callable[[Path, Variant, Sequence[str]], str | None] = run_selftest,
) -> Choice:
    """The module this process should register, after self-testing the better candidates."""
    variants = variants_of(meta)
    if len(variants) <= 1:
        v = variants[0] if variants else Variant(CPU_FLOOR, "libggml-cpu.so.0", ())
        return Choice("linked", v.name, v.library, v.score)
    flags = cpu.cpuid_flags() if flags is None else flags
    forced = forced if forced is not None else settings.get(FORCE)
    by_name = {v.name: v for v in variants}
    if forced is not None and forced not in by_name:
        raise CpuError(
            f"{FORCE}={forced} names no CPU module of {lib_dir} (it ships {', '.join(by_name)}); "
            f"set one of those or unset it."
        )
    models = model_digests(lib_dir, meta)
    signature = cpu_signature(flags)
    skipped: dict[str, str] = {}
    tests: dict[str, str] = {}
    ranked = [by_name[forced]] if forced else sorted(variants, key=lambda v: -v.score)
    for v in ranked:
        missing = [f for f in v.cpu_flags if f not in flags]
        if missing:
            if forced:
                raise CpuError(
                    f"{FORCE}={forced}: this CPU lacks {', '.join(missing)} (from CPUID), which the "
                    f"{forced} module of {lib_dir} needs; unset it to let the binding choose."
                )
            skipped[v.name] = f"this CPU lacks {', '.join(missing)}"
            continue
        if v.name != CPU_FLOOR:
            reason, how = cached_selftest(lib_dir, v, models, signature, runner)
            tests[v.name] = f"{how}: {'passed' if reason is None else reason}"
            if reason is not None:
                if forced:
                    raise CpuError(
                        f"{FORCE}={forced}: the {forced} module of {lib_dir} failed its self-test on this "
                        f"CPU ({reason}); unset it to let the binding choose a module that works."
                    )
                skipped[v.name] = reason
                info(f"CPU module {v.name} skipped: {reason}")
                continue
        return Choice("runtime", v.name, v.library, v.score, bool(forced), skipped, tests)
    raise CpuError(  # unreachable when the floor's flags were checked first; kept as a clear error
        f"No CPU module of {lib_dir} runs on this CPU ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})."
    )
