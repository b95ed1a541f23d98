"""verify.isa: the instruction-level audit, on shared objects compiled here with gcc."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from whisper_release.core.errors import VerificationError
from whisper_release.testing import require_tool
from whisper_release.verify import isa

FLOOR = ["avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"]

AVX2_FMA_C = r"""
#include <immintrin.h>
__m256i add_i32(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
__m256 fmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
int scalar(int x) { return x * 3 + 1; }
"""

# One instruction as raw bytes in a function of its own: what inline asm or a prebuilt object could
# smuggle in without any compiler flag showing it. The first two look like plain AVX2 by mnemonic.
PLANTS = {
    "AVX_VNNI": ("c4 e2 75 50 c2", "vpdpbusd ymm0,ymm1,ymm2"),
    "AVX_IFMA": ("c4 e2 f5 b4 c2", "vpmadd52luq ymm0,ymm1,ymm2"),
    "AVX512F": ("62 f1 7c 48 58 c1", "vaddps zmm0,zmm0,zmm1"),
    "AVX512VL": ("62 f3 75 28 25 c2 96", "vpternlogd ymm0,ymm1,ymm2,96h"),
}


def _compile(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    gcc = require_tool("gcc", "compiles the probe libraries")
    suffix = ".S" if source.lstrip().startswith(".") else ".c"
    src = tmp_path / f"{name}{suffix}"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", *flags, str(src), "-o", str(out)], check=True)
    return out


def _blob(tmp_path: Path, hexbytes: str) -> Path:
    body = ", ".join(f"0x{b}" for b in hexbytes.split())
    return _compile(
        tmp_path,
        "blob",
        f"""
    .text
    .globl harmless
    .type harmless, @function
harmless:
    xor %eax, %eax
    ret
    .size harmless, .-harmless
    .globl blob
    .type blob, @function
blob:
    .byte {body}
    ret
    .size blob, .-blob
    .section .note.GNU-stack,"",@progbits
""",
    )


def symbol_offset(so: Path, name: str, *, function: bool = False) -> int:
    """File offset of dynamic symbol `name` in `so` (with `function`, it must be a function)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with so.open("rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        syms = dynsym.get_symbol_by_name(name)
        assert syms, f"{name} is not a dynamic symbol"
        (sym,) = syms
        if function:
            assert sym["st_info"]["type"] == "STT_FUNC", sym
        (off,) = elf.address_offsets(sym["st_value"])
        return int(off)


def test_avx2_fma_library_passes_the_floor_and_is_counted(tmp_path: Path) -> None:
    so = _compile(tmp_path, "avx2", AVX2_FMA_C, "-mavx2", "-mfma")
    a = isa.audit_library(so, FLOOR, must_use=isa.CPU_BACKEND_MUST_USE)
    assert a.ok, a.messages()
    assert a.features["AVX2"] >= 1 and a.features["FMA"] >= 1
    assert a.instructions > a.features["AVX2"] + a.features["FMA"]


def test_the_same_library_fails_a_lower_floor(tmp_path: Path) -> None:
    so = _compile(tmp_path, "avx2", AVX2_FMA_C, "-mavx2", "-mfma")
    a = isa.audit_library(so, ["sse4_2"])
    assert {"AVX2", "FMA"} <= set(a.violations)
    assert {v.function for v in a.examples} <= {"add_i32", "fmadd"}


def test_a_scalar_cpu_backend_is_a_finding(tmp_path: Path) -> None:
    so = _compile(tmp_path, "scalar", "int f(int x) { return x + 1; }\n")
    a = isa.audit_library(so, FLOOR, must_use=isa.CPU_BACKEND_MUST_USE)
    assert a.missing == ["AVX2", "FMA"]
    assert not a.ok
    assert "no AVX2 instruction at all" in a.messages()[0]


@pytest.mark.parametrize("feature", sorted(PLANTS))
def test_one_planted_instruction_is_named(tmp_path: Path, feature: str) -> None:
    hexbytes, text = PLANTS[feature]
    so = _blob(tmp_path, hexbytes)
    a = isa.audit_library(so, FLOOR)
    # An AVX512VL instruction also needs AVX512F: both are named, at the same instruction.
    want = {feature, "AVX512F"} if feature.startswith("AVX512") else {feature}
    assert a.violations == dict.fromkeys(want, 1)
    assert {v.feature for v in a.examples} == want
    v = a.examples[0]
    assert (v.library, v.offset, v.function, v.instruction) == (
        so.name,
        symbol_offset(so, "blob"),
        "blob",
        text,
    )
    assert "x86-64 baseline + avx, avx2, fma, f16c, bmi2, sse4_2" in str(v)


def test_a_variant_may_use_its_own_features(tmp_path: Path) -> None:
    so = _blob(tmp_path, PLANTS["AVX_VNNI"][0])
    assert isa.audit_library(so, [*FLOOR, "avx_vnni"]).ok


def test_implications_follow_gcc() -> None:
    allowed = isa.allowed_features(["avx2"])
    assert {"AVX", "AVX2", "SSE4_2", "SSE4_1", "SSSE3", "SSE3", "POPCNT", "SSE2", "X64"} <= allowed
    assert not {"FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512F"} & allowed
    assert "AVX512F" in isa.allowed_features(["avx512vl"])


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(VerificationError, match="does not know the CPU flag.*avx9000"):
        isa.allowed_features(["avx2", "avx9000"])


def test_not_an_elf_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"\x7fELF" + b"\0" * 8)
    with pytest.raises(VerificationError, match="not a readable ELF"):
        isa.audit_library(junk, FLOOR)
