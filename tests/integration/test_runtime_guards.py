"""The guards against the pinned whisper.cpp's known defects, and the binding's version check, with
the real built library (runtime/known_defects.py).

Each probe runs in a child process: on a library without the guard it dies of SIGSEGV (measured on
1.8.5), which must fail the test, not kill pytest. Needs the built artifacts (`invoke build`:
dist/release_artifacts, or $WHISPER_RELEASE_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_release.core.pins import project_root
from whisper_release.runtime.known_defects import BINDING_VERSION, SHORT_AUDIO_MIN_SAMPLES
from whisper_release.testing import unavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def artifact() -> Path:
    root = Path(os.environ.get("WHISPER_RELEASE_ARTIFACTS", project_root() / "dist" / "release_artifacts"))
    dirs = sorted(root.glob("whisper_*_xeon"))
    if not (root / "manifest.json").is_file() or not dirs:
        unavailable(f"the built release in {root} is missing (run `invoke build`)", "; CI builds it first")
    return dirs[0]


def _model(artifact: Path) -> Path:
    return sorted(artifact.glob("ggml-*.bin"))[0]


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=300)


# 100 samples placed right before a PROT_NONE page: any read past the input faults at once.
_SHORT_AUDIO = r"""
import ctypes, mmap, sys
import numpy as np
from whisper_release.runtime import binding
art, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = binding.load(art, required_flags=[])
page = mmap.PAGESIZE
buf = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(addr + page, page, 0) == 0
pcm = np.frombuffer(buf, dtype=np.float32, count=n, offset=page - 4 * n)
pcm[:] = 0.01
with w.open(model) as ctx:
    segs = ctx.transcribe(pcm, threads=1)
print("transcribed", len(segs), "segments")
"""


def test_short_audio_is_padded_not_overread(artifact: Path) -> None:
    n = 100
    assert n < SHORT_AUDIO_MIN_SAMPLES
    proc = _run(_SHORT_AUDIO, str(artifact), str(_model(artifact)), str(n))
    why = f"exit {proc.returncode} (-11: read past the input, #3956): {proc.stderr[-800:]}"
    assert proc.returncode == 0, why
    assert "transcribed" in proc.stdout


_OPEN_MODEL = r"""
import sys
from whisper_release.core.errors import VerificationError
from whisper_release.runtime import binding
w = binding.load(sys.argv[1], required_flags=[])
try:
    w.open(sys.argv[2])
except VerificationError as e:
    print("refused:", e)
    sys.exit(4)
print("loaded")
"""


def test_malformed_n_dims_is_refused_before_the_library_reads_it(artifact: Path, tmp_path: Path) -> None:
    from whisper_release.weights import ggml

    src = _model(artifact)
    data = bytearray(src.read_bytes())
    struct.pack_into("<i", data, ggml.read_header(src).tensor_offset, 100)  # first tensor's n_dims
    bad = tmp_path / src.name
    bad.write_bytes(bytes(data))
    proc = _run(_OPEN_MODEL, str(artifact), str(bad))
    assert proc.returncode == 4, f"exit {proc.returncode} (-11: stack overflow, #3957): {proc.stderr[-800:]}"
    assert "has n_dims 100 (expected 1..4)" in proc.stdout


_LOAD = r"""
import sys
from whisper_release.core.errors import VerificationError
from whisper_release.runtime import binding
try:
    w = binding.load(sys.argv[1], required_flags=[])
except VerificationError as e:
    print("refused:", e)
    sys.exit(4)
print("loaded", w.version)
"""


def test_library_of_another_version_is_refused(artifact: Path, tmp_path: Path) -> None:
    """The real libwhisper with its version string patched (same length): what a library of another
    release reports through whisper_version()."""
    other = tmp_path / "other"
    shutil.copytree(artifact, other)
    lib = other / "libwhisper.so"
    data = lib.read_bytes()
    want = BINDING_VERSION.encode() + b"\0"
    assert data.count(want) == 1, "the version string is not unique in libwhisper.so"
    lib.write_bytes(data.replace(want, b"1.9.3\0"))
    proc = _run(_LOAD, str(other))
    assert proc.returncode == 4, proc.stdout + proc.stderr[-800:]
    said = f"is whisper.cpp 1.9.3, but this binding was written for whisper.cpp {BINDING_VERSION}"
    assert said in proc.stdout
    ok = _run(_LOAD, str(artifact))
    assert ok.returncode == 0 and f"loaded {BINDING_VERSION}" in ok.stdout, ok.stderr[-800:]
