"""cpu: the CPUID probe on this host (against the kernel's /proc/cpuinfo), and cpuinfo-format files."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_release.core.errors import CpuError
from whisper_release.runtime import cpu
from whisper_release.testing import unavailable


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
    assert "sse2" in flags  # every x86-64 CPU has it; proves CPUID was read


@pytest.mark.parametrize("flag", sorted(set(cpu.CPUID_FLAGS.values())))
def test_cpuid_probe_agrees_with_the_kernel(flag: str) -> None:
    # Linux derives /proc/cpuinfo from the same CPUID bits and XCR0: on real (not emulated) hardware
    # both must agree on every flag of the table, present or absent.
    kernel = cpu.host_flags(cpu.CPUINFO)
    probe = cpu.cpuid_flags()
    assert (flag in probe) == (flag in kernel), (
        f"{flag}: CPUID says {'present' if flag in probe else 'absent'}, /proc/cpuinfo says "
        f"{'present' if flag in kernel else 'absent'}"
    )


def test_avx_counts_only_with_os_support() -> None:
    # OSXSAVE and XCR0's SSE|AVX bits: the kernel has enabled YMM state wherever avx is reported.
    flags = cpu.cpuid_flags()
    if "avx" not in flags:
        unavailable("this host has no usable AVX", "; the release's CPU floor needs AVX2 hosts for CI")
    assert cpu.cpuid(1)["ecx"] >> 27 & 1
    assert cpu.xgetbv(0) & cpu.XCR0_YMM == cpu.XCR0_YMM


def test_require_flags_reads_cpuid_by_default() -> None:
    # Every flag the probe sees is accepted; a CPU that lacks one is refused "(from CPUID)" in
    # verify/test_emulated.py, under emulated CPU models (no real CPU here lacks anything).
    cpu.require_flags(sorted(cpu.cpuid_flags()), "the test")
    assert cpu.missing_flags(["sse2", "cmov", "fxsr"]) == []


def test_a_flag_cpuid_cannot_show_is_refused_clearly() -> None:
    with pytest.raises(CpuError, match="cannot read no_such_flag from CPUID"):
        cpu.missing_flags(["sse2", "no_such_flag"])
