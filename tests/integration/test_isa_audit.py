"""`whisper-release audit` on the built artifacts, and on copies with one instruction planted over the
start of a function of the CPU library: each failure names library, offset, instruction and feature.

Needs built artifacts: $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts (CI builds first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_isa import symbol_offset

from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import project_root
from whisper_release.testing import unavailable

pytestmark = pytest.mark.integration

CPU_LIB = "libggml-cpu.so.0"
FUNCTION = "ggml_cpu_init"
# (feature, bytes, iced-x86's text): VEX AVX-VNNI and AVX-IFMA look like AVX2 to a mnemonic regex.
PLANTS = [
    ("AVX_VNNI", "c4 e2 75 50 c2", "vpdpbusd ymm0,ymm1,ymm2"),
    ("AVX_IFMA", "c4 e2 f5 b4 c2", "vpmadd52luq ymm0,ymm1,ymm2"),
    ("AVX512F", "62 f1 7c 48 58 c1", "vaddps zmm0,zmm0,zmm1"),
]


@pytest.fixture(scope="module")
def built() -> Path:
    """The release_artifacts directory (read only: every change happens on a copy)."""
    env = os.environ.get("WHISPER_RELEASE_ARTIFACTS")
    root = Path(env) if env else project_root() / "dist" / "release_artifacts"
    if not sorted(root.glob("whisper_*_xeon")):
        unavailable(f"no built artifacts under {root}; run `invoke build` (or set WHISPER_RELEASE_ARTIFACTS)")
    return root


def _audit(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "whisper_release.cli", "audit", str(path), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_audit_passes_the_built_artifacts(built: Path) -> None:
    p = _audit(built)
    assert p.returncode == 0, p.stdout + p.stderr
    for d in sorted(built.glob("whisper_*_xeon")):
        assert str(d) in p.stdout
    cpu_rows = [line for line in p.stdout.splitlines() if CPU_LIB in line]
    assert cpu_rows and all(" ok " in r and "AVX2=" in r and "FMA=" in r for r in cpu_rows), p.stdout
    js = _audit(built, "--json")
    assert js.returncode == 0, js.stderr
    import json

    for a in json.loads(js.stdout):
        assert a["ok"] and a["libraries"][CPU_LIB]["features"]["AVX2"] > 0


@pytest.mark.parametrize(("feature", "code", "text"), PLANTS, ids=[p[0] for p in PLANTS])
def test_one_planted_instruction_fails_the_audit(
    built: Path, tmp_path: Path, feature: str, code: str, text: str
) -> None:
    src = sorted(built.glob("whisper_*_xeon"))[0]
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    lib = copy / CPU_LIB
    at = symbol_offset(lib, FUNCTION, function=True)
    with lib.open("r+b") as f:
        f.seek(at)
        f.write(bytes.fromhex(code))
    p = _audit(copy)
    out = p.stdout + p.stderr
    assert p.returncode == VerificationError.exit_code, out
    assert f"{CPU_LIB}: offset {at:#x} ({FUNCTION}): `{text}` needs {feature}" in out, out
    assert "x86-64 baseline + avx, avx2, fma, f16c, bmi2, sse4_2" in out
    assert "VIOLATIONS" in p.stdout
