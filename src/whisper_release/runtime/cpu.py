"""What the host CPU offers, read from CPUID itself.

The host side executes CPUID and XGETBV: /proc/cpuinfo describes the host kernel's CPU, which is
not the CPU a program sees under an emulator (qemu-user) or some sandboxes, and it would let a
binary die of SIGILL after minutes of work instead of refusing at once (FACTS.md, 2026-12-01).
The instruction-level audit of shipped libraries is whisper_release.verify.isa.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from whisper_release.core.errors import CpuError

CPUINFO = Path("/proc/cpuinfo")

# (leaf, subleaf, register, bit) -> flag name as /proc/cpuinfo spells it (Intel SDM vol. 2A, CPUID).
CPUID_FLAGS: dict[tuple[int, int, str, int], str] = {
    (1, 0, "edx", 0): "fpu",
    (1, 0, "edx", 4): "tsc",
    (1, 0, "edx", 8): "cx8",
    (1, 0, "edx", 15): "cmov",
    (1, 0, "edx", 23): "mmx",
    (1, 0, "edx", 24): "fxsr",
    (1, 0, "edx", 25): "sse",
    (1, 0, "edx", 26): "sse2",
    (1, 0, "ecx", 0): "pni",
    (1, 0, "ecx", 1): "pclmulqdq",
    (1, 0, "ecx", 9): "ssse3",
    (1, 0, "ecx", 12): "fma",
    (1, 0, "ecx", 13): "cx16",
    (1, 0, "ecx", 19): "sse4_1",
    (1, 0, "ecx", 20): "sse4_2",
    (1, 0, "ecx", 22): "movbe",
    (1, 0, "ecx", 23): "popcnt",
    (1, 0, "ecx", 25): "aes",
    (1, 0, "ecx", 26): "xsave",
    (1, 0, "ecx", 28): "avx",
    (1, 0, "ecx", 29): "f16c",
    (1, 0, "ecx", 30): "rdrand",
    (7, 0, "ebx", 3): "bmi1",
    (7, 0, "ebx", 5): "avx2",
    (7, 0, "ebx", 8): "bmi2",
    (7, 0, "ebx", 16): "avx512f",
    (7, 0, "ebx", 17): "avx512dq",
    (7, 0, "ebx", 18): "rdseed",
    (7, 0, "ebx", 19): "adx",
    (7, 0, "ebx", 21): "avx512ifma",
    (7, 0, "ebx", 28): "avx512cd",
    (7, 0, "ebx", 29): "sha_ni",
    (7, 0, "ebx", 30): "avx512bw",
    (7, 0, "ebx", 31): "avx512vl",
    (7, 0, "ecx", 1): "avx512vbmi",
    (7, 0, "ecx", 6): "avx512_vbmi2",
    (7, 0, "ecx", 8): "gfni",
    (7, 0, "ecx", 9): "vaes",
    (7, 0, "ecx", 10): "vpclmulqdq",
    (7, 0, "ecx", 11): "avx512_vnni",
    (7, 0, "ecx", 12): "avx512_bitalg",
    (7, 0, "ecx", 14): "avx512_vpopcntdq",
    (7, 0, "edx", 22): "amx_bf16",
    (7, 0, "edx", 23): "avx512_fp16",
    (7, 0, "edx", 24): "amx_tile",
    (7, 0, "edx", 25): "amx_int8",
    (7, 1, "eax", 4): "avx_vnni",
    (7, 1, "eax", 5): "avx512_bf16",
    (0x80000001, 0, "ecx", 0): "lahf_lm",
    (0x80000001, 0, "ecx", 5): "abm",
    (0x80000001, 0, "edx", 11): "syscall",
    (0x80000001, 0, "edx", 29): "lm",
}
_OSXSAVE = (1, 0, "ecx", 27)
# XCR0 state components the OS must enable before the registers of an extension may be used:
# SSE|AVX (YMM), plus opmask|ZMM_Hi256|Hi16_ZMM for AVX-512, plus TILECFG|TILEDATA for AMX.
XCR0_YMM = 0x6
XCR0_ZMM = 0xE6
XCR0_TILE = 0x60000
# Flags whose instructions touch YMM/ZMM/tile state: Linux hides them from /proc/cpuinfo when XCR0
# lacks the state, and so does this probe.
_NEEDS_YMM = {"avx", "avx2", "fma", "f16c", "vaes", "vpclmulqdq", "avx_vnni"}
_NEEDS_TILE = {"amx_tile", "amx_int8", "amx_bf16"}

# x86-64 machine code, System V ABI. cpuid(leaf=edi, subleaf=esi, out=rdx -> u32[4] eax,ebx,ecx,edx):
#   push rbx; mov r8,rdx; mov eax,edi; mov ecx,esi; cpuid;
#   mov [r8],eax; mov [r8+4],ebx; mov [r8+8],ecx; mov [r8+12],edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 4989d0 89f8 89f1 0fa2 418900 41895804 41894808 4189500c 5b c3")
# xgetbv(xcr=edi) -> u64: mov ecx,edi; xgetbv; shl rdx,32; or rax,rdx; ret
_XGETBV_CODE = bytes.fromhex("89f9 0f01d0 48c1e220 4809d0 c3")

_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4
_MAP_PRIVATE, _MAP_ANONYMOUS = 0x02, 0x20
_probe_lock = threading.Lock()
_probe: tuple[object, object] | None = None


def _machine_code() -> tuple[object, object]:
    """The two probe functions, in one anonymous page made executable only after it is written
    (never writable and executable at once). The page is kept for the life of the process."""
    global _probe
    with _probe_lock:
        if _probe is not None:
            return _probe
        if os.uname().machine != "x86_64":
            raise CpuError(
                f"This machine is {os.uname().machine}, not x86-64: the release's libraries are x86-64 "
                f"code; run them on an x86-64 server."
            )
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]  # fmt: skip
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        size = 4096
        page = libc.mmap(None, size, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0)
        if page in (None, ctypes.c_void_p(-1).value):
            raise CpuError(
                f"Cannot map a page for the CPUID probe ({os.strerror(ctypes.get_errno())}); "
                f"the CPU check needs anonymous memory."
            )
        ctypes.memmove(page, _CPUID_CODE, len(_CPUID_CODE))
        ctypes.memmove(page + 64, _XGETBV_CODE, len(_XGETBV_CODE))
        if libc.mprotect(page, size, _PROT_READ | _PROT_EXEC) != 0:
            raise CpuError(
                f"Cannot make the CPUID probe's page executable ({os.strerror(ctypes.get_errno())}): "
                f"a policy forbids executable anonymous memory here; allow it for this process."
            )
        u32 = ctypes.c_uint32
        cpuid = ctypes.CFUNCTYPE(None, u32, u32, ctypes.POINTER(u32))(page)
        xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(page + 64)
        _probe = (cpuid, xgetbv)
        return _probe


def cpuid(leaf: int, subleaf: int = 0) -> dict[str, int]:
    """The CPUID instruction's eax, ebx, ecx and edx for one leaf and subleaf."""
    fn, _ = _machine_code()
    out = (ctypes.c_uint32 * 4)()
    fn(leaf, subleaf, out)  # type: ignore[operator]
    return dict(zip(("eax", "ebx", "ecx", "edx"), (int(v) for v in out), strict=True))


def xgetbv(xcr: int = 0) -> int:
    """XCR0 by default: which register states the OS saves (only valid when CPUID says OSXSAVE)."""
    _, fn = _machine_code()
    return int(fn(xcr))  # type: ignore[operator]


def cpuid_flags() -> set[str]:
    """This CPU's flags from CPUID, named as in /proc/cpuinfo, counting an AVX/AVX-512/AMX flag
    only when the OS has enabled its register state in XCR0 (as Linux does for /proc/cpuinfo)."""
    regs: dict[tuple[int, int], dict[str, int]] = {}
    max_basic = cpuid(0)["eax"]
    max_ext = cpuid(0x80000000)["eax"]

    def bit(leaf: int, sub: int, reg: str, n: int) -> bool:
        if leaf > (max_ext if leaf >= 0x80000000 else max_basic):
            return False
        if (leaf, sub) not in regs:
            regs[(leaf, sub)] = cpuid(leaf, sub)
        return bool(regs[(leaf, sub)][reg] >> n & 1)

    flags = {name for key, name in CPUID_FLAGS.items() if bit(*key)}
    xcr0 = xgetbv(0) if bit(*_OSXSAVE) else 0
    if xcr0 & XCR0_YMM != XCR0_YMM:
        flags -= _NEEDS_YMM
    if xcr0 & XCR0_ZMM != XCR0_ZMM:
        flags -= {f for f in flags if f.startswith("avx512")}
    if xcr0 & XCR0_TILE != XCR0_TILE:
        flags -= _NEEDS_TILE
    return flags


def host_flags(cpuinfo: str | os.PathLike[str] | None = None) -> set[str]:
    """This CPU's feature flags: from CPUID (the default), or from a cpuinfo-format file, which tests
    use to describe another CPU."""
    if cpuinfo is None:
        return cpuid_flags()
    path = Path(cpuinfo)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise CpuError(
            f"Cannot read CPU flags from {path} ({e.strerror}); pass a file in /proc/cpuinfo's format."
        ) from None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    raise CpuError(f"{path} has no 'flags' line; cannot tell which instruction sets this CPU has.")


def _unknown(required: Iterable[str], cpuinfo: str | os.PathLike[str] | None) -> list[str]:
    known = set(CPUID_FLAGS.values())
    return [f for f in required if cpuinfo is None and f not in known]


def missing_flags(required: Iterable[str], cpuinfo: str | os.PathLike[str] | None = None) -> list[str]:
    """Required flags this CPU lacks, in the order given."""
    required = list(required)
    unknown = _unknown(required, cpuinfo)
    if unknown:
        raise CpuError(
            f"The CPU check cannot read {', '.join(unknown)} from CPUID: wanted flags from "
            f"whisper_release.runtime.cpu.CPUID_FLAGS; add the flag's CPUID bit there."
        )
    have = host_flags(cpuinfo)
    return [f for f in required if f not in have]


def require_flags(
    required: Iterable[str], what: str, cpuinfo: str | os.PathLike[str] | None = None
) -> None:
    """Raise CpuError naming every missing flag, so nothing ever dies of SIGILL instead."""
    required = list(required)
    missing = missing_flags(required, cpuinfo)
    if missing:
        source = "CPUID" if cpuinfo is None else str(Path(cpuinfo))
        raise CpuError(
            f"This CPU lacks {', '.join(missing)} (from {source}), which {what} needs "
            f"(wanted all of {', '.join(required)}); run it on a Haswell-class or newer x86-64 server."
        )
