"""cpu: host flags and the disassembly audit, on shared objects compiled here with gcc."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from whisper_release.core.errors import CpuError, ToolError
from whisper_release.runtime import cpu
from whisper_release.testing import require_tool

AVX2_FMA_C = r"""
#include <immintrin.h>
__m256i add_i32(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
__m256 fmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
int scalar(int x) { return x * 3 + 1; }
"""

AVX512_C = r"""
#include <immintrin.h>
__m512 add512(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
"""

# Exactly one AVX-512 instruction as raw bytes (vaddps %zmm1,%zmm0,%zmm0): what a prebuilt object
# or inline asm could smuggle in without any compiler flag showing it.
ONE_EVEX_S = r"""
    .text
    .globl blob
    .type blob, @function
blob:
    .byte 0x62, 0xf1, 0x7c, 0x48, 0x58, 0xc1
    ret
    .size blob, .-blob
    .section .note.GNU-stack,"",@progbits
"""


def _compile(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    gcc = require_tool("gcc", "compiles the probe libraries")
    suffix = ".S" if source.lstrip().startswith(".") else ".c"
    src = tmp_path / f"{name}{suffix}"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", *flags, str(src), "-o", str(out)], check=True)
    return out


@pytest.fixture(autouse=True)
def _objdump() -> None:
    require_tool("objdump", "the ISA audit disassembles with it")


def test_avx2_fma_library_counts_and_no_avx512(tmp_path: Path) -> None:
    so = _compile(tmp_path, "avx2", AVX2_FMA_C, "-mavx2", "-mfma")
    counts = cpu.audit_isa(so)
    assert counts["avx2"] >= 1
    assert counts["fma"] >= 1
    assert counts["avx512"] == 0
    assert counts.forbidden == {}
    assert counts.total > counts["avx2"] + counts["fma"]


def test_avx512f_library_is_flagged(tmp_path: Path) -> None:
    so = _compile(tmp_path, "avx512", AVX512_C, "-mavx512f")
    counts = cpu.audit_isa(so)
    assert counts["avx512"] >= 1
    assert "avx512" in counts.forbidden
    assert any("zmm" in ex for ex in counts.examples["avx512"])


def test_single_evex_instruction_in_raw_bytes_is_found(tmp_path: Path) -> None:
    so = _compile(tmp_path, "blob", ONE_EVEX_S)
    counts = cpu.audit_isa(so)
    assert counts["avx512"] == 1
    assert counts.examples["avx512"][0].endswith("vaddps %zmm1,%zmm0,%zmm0")


def test_avx512vl_without_zmm_is_still_evex(tmp_path: Path) -> None:
    # 256-bit EVEX (AVX512VL) never names a zmm register; the 0x62 prefix gives it away.
    src = r"""
#include <immintrin.h>
__m256i tern(__m256i a, __m256i b, __m256i c) { return _mm256_ternarylogic_epi32(a, b, c, 0x96); }
"""
    so = _compile(tmp_path, "vl", src, "-mavx512f", "-mavx512vl")
    counts = cpu.audit_isa(so)
    assert counts["avx512"] >= 1
    assert all("zmm" not in ex for ex in counts.examples["avx512"])


def test_classify_k_mask_and_amx() -> None:
    assert "avx512" in cpu._classify("c5 f8 92 c8", "kmovw %eax,%k1")
    assert cpu._classify("c4 e2 78 49 c0", "tilerelease") == ["amx"]
    assert cpu._classify("c4 e2 7d 50 c1", "{vex} vpdpbusd %ymm1,%ymm0,%ymm0") == ["avx_vnni"]
    assert cpu._classify("c5 fc 58 c1", "vaddps %ymm1,%ymm0,%ymm0") == ["avx"]
    assert cpu._classify("c4 e2 79 13 c0", "vcvtph2ps %xmm0,%xmm0") == ["f16c"]
    assert cpu._classify("48 01 d8", "add %rbx,%rax") == []


def test_audit_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        cpu.audit_isa(tmp_path / "nope.so")


def test_host_flags_from_cpuinfo_text(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx fma f16c bmi2\n\nprocessor\t: 1\n")
    assert cpu.host_flags(info) == {"fpu", "sse4_2", "avx", "fma", "f16c", "bmi2"}
    assert cpu.missing_flags(["avx", "avx2", "fma", "bmi2"], info) == ["avx2"]
    with pytest.raises(CpuError, match=r"This CPU lacks avx2 .* the test binary needs"):
        cpu.require_flags(["avx", "avx2"], "the test binary", info)


def test_host_flags_bad_cpuinfo(tmp_path: Path) -> None:
    bad = tmp_path / "cpuinfo"
    bad.write_text("processor : 0\n")
    with pytest.raises(CpuError, match="no 'flags' line"):
        cpu.host_flags(bad)
    with pytest.raises(CpuError, match="Cannot read"):
        cpu.host_flags(tmp_path / "missing")


def test_real_host_has_flags() -> None:
    flags = cpu.host_flags()
    assert "sse2" in flags  # every x86-64 CPU has it; proves the real file parsed
