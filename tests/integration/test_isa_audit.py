"""`whisper-release audit` on the built artifacts, and on copies with one instruction planted over the
start of a function of a CPU library: each failure names library, offset, instruction and feature. The
floor's library is held to the floor; a runtime CPU module above it to its own variant's flags.

Needs built artifacts: $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts (CI builds first).
"""

from __future__ import annotations

import json
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

FUNCTION = "ggml_cpu_init"
FLOOR_TEXT = "x86-64 baseline + avx, avx2, fma, f16c, bmi2, sse4_2"
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


def _cpu_libs(built: Path) -> list[str]:
    """The CPU libraries of the built artifacts (artifact.json cpu_variants), the floor's first."""
    d = sorted(built.glob("whisper_*_xeon"))[0]
    meta = json.loads((d / "artifact.json").read_text())
    return [str(v["library"]) for v in meta["cpu_variants"]]


def _planted(built: Path, tmp_path: Path, lib_name: str, code: str) -> tuple[Path, int]:
    """A copy of the first artifact directory with `code` written over FUNCTION in `lib_name`."""
    src = sorted(built.glob("whisper_*_xeon"))[0]
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    lib = copy / lib_name
    at = symbol_offset(lib, FUNCTION, function=True)
    with lib.open("r+b") as f:
        f.seek(at)
        f.write(bytes.fromhex(code))
    return copy, at


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
    floor = _cpu_libs(built)[0]
    cpu_rows = [line for line in p.stdout.splitlines() if floor in line]
    assert cpu_rows and all(" ok " in r and "AVX2=" in r and "FMA=" in r for r in cpu_rows), p.stdout
    js = _audit(built, "--json")
    assert js.returncode == 0, js.stderr
    for a in json.loads(js.stdout):
        assert a["ok"] and a["libraries"][floor]["features"]["AVX2"] > 0
        for lib in _cpu_libs(built)[1:]:  # each module above the floor uses its own ISA
            assert a["libraries"][lib]["allowed_flags"] != a["libraries"][floor]["allowed_flags"]


@pytest.mark.parametrize(("feature", "code", "text"), PLANTS, ids=[p[0] for p in PLANTS])
def test_one_planted_instruction_fails_the_audit(
    built: Path, tmp_path: Path, feature: str, code: str, text: str
) -> None:
    floor = _cpu_libs(built)[0]
    copy, at = _planted(built, tmp_path, floor, code)
    p = _audit(copy)
    out = p.stdout + p.stderr
    assert p.returncode == VerificationError.exit_code, out
    assert f"{floor}: offset {at:#x} ({FUNCTION}): `{text}` needs {feature}" in out, out
    assert FLOOR_TEXT in out
    assert "VIOLATIONS" in p.stdout


# (module, bytes, iced-x86's text, feature, passes): a module may use its own variant's ISA and no more.
MODULE_PLANTS = [
    ("zen4", "62 f1 7c 48 58 c1", "vaddps zmm0,zmm0,zmm1", "AVX512F", True),
    ("zen4", "c4 e2 78 49 c0", "tilerelease", "AMX_TILE", False),
    ("skylakex", "c4 e2 75 50 c2", "vpdpbusd ymm0,ymm1,ymm2", "AVX_VNNI", False),
    ("alderlake", "62 f1 7c 48 58 c1", "vaddps zmm0,zmm0,zmm1", "AVX512F", False),
]


@pytest.mark.parametrize(("module", "code", "text", "feature", "passes"), MODULE_PLANTS,
                         ids=[f"{m[0]}-{m[3]}" for m in MODULE_PLANTS])  # fmt: skip
def test_a_module_is_held_to_its_own_variant(
    built: Path, tmp_path: Path, module: str, code: str, text: str, feature: str, passes: bool
) -> None:
    lib_name = f"libggml-cpu-{module}.so"
    if lib_name not in _cpu_libs(built):
        unavailable(f"the built artifacts ship no {lib_name} ([build] cpu_variants); build them with it")
    copy, at = _planted(built, tmp_path, lib_name, code)
    p = _audit(copy)
    out = p.stdout + p.stderr
    if passes:
        assert p.returncode == 0, out
        return
    assert p.returncode == VerificationError.exit_code, out
    line = next(m for m in out.split("; ") if f"{lib_name}: offset {at:#x} ({FUNCTION})" in m)
    assert f"`{text}` needs {feature}" in line, line
    # the module's own allow-list, not the floor's, is what it broke
    assert FLOOR_TEXT + ", " in line, line
