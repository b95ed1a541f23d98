"""What the host CPU offers, and what instruction-set extensions a shipped library really uses.

The library side reads the machine code itself (objdump disassembly), not ELF notes or compiler
flags: a note can be missing or lie, a stray `-march=native` object cannot hide from a disassembly.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from whisper_release.core.console import which
from whisper_release.core.errors import CpuError, ToolError

CPUINFO = Path("/proc/cpuinfo")

# Extensions whose presence in a shipped library is a defect for the Haswell-class target.
FORBIDDEN = ("avx512", "amx", "avx_vnni")


def host_flags(cpuinfo: str | os.PathLike[str] = CPUINFO) -> set[str]:
    """The feature flags the kernel reports for the first CPU (all cores of a server agree)."""
    path = Path(cpuinfo)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise CpuError(
            f"Cannot read CPU flags from {path} ({e.strerror}); this check needs Linux's /proc."
        ) from None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    raise CpuError(f"{path} has no 'flags' line; cannot tell which instruction sets this CPU has.")


def missing_flags(required: Iterable[str], cpuinfo: str | os.PathLike[str] = CPUINFO) -> list[str]:
    """Required flags this host lacks, in the order given."""
    have = host_flags(cpuinfo)
    return [f for f in required if f not in have]


def require_flags(required: Iterable[str], what: str, cpuinfo: str | os.PathLike[str] = CPUINFO) -> None:
    """Raise CpuError naming every missing flag, so nothing ever dies of SIGILL instead."""
    required = list(required)
    missing = missing_flags(required, cpuinfo)
    if missing:
        raise CpuError(
            f"This CPU lacks {', '.join(missing)} (from {Path(cpuinfo)}), which {what} needs "
            f"(wanted all of {', '.join(required)}); run it on a Haswell-class or newer x86-64 server."
        )


@dataclass
class IsaCounts:
    """Instruction counts per extension in one library's executable sections."""

    path: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    # A few offending instructions per forbidden extension, "address: text", for findings.
    examples: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, ext: str) -> int:
        return self.counts.get(ext, 0)

    @property
    def forbidden(self) -> dict[str, int]:
        return {ext: self[ext] for ext in FORBIDDEN if self[ext]}

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "total": self.total,
            "counts": dict(self.counts),
            "examples": self.examples,
        }


# Legacy prefixes that may legally precede a VEX/EVEX prefix (address size, segment overrides).
_PASS_PREFIXES = {0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}
_EVEX_REGS = re.compile(
    r"%zmm\d|%k[0-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b|\{1to\d+\}|\{(?:rn|rd|ru|rz)?-?sae\}"
)
_AMX = re.compile(r"^(?:tile\w+|tdp\w+|tcmmi?\w+|ldtilecfg|sttilecfg)$")
_FMA = re.compile(r"^v(?:fn?m(?:add|sub)|fmaddsub|fmsubadd)\d{3}[ps][sdh]$")
_F16C = {"vcvtph2ps", "vcvtps2ph"}
# AVX2 beyond "vp* on ymm": these also exist on xmm or have no ymm operand in the name's shape.
_AVX2_ALWAYS = re.compile(
    r"^(?:vperm2i128|vinserti128|vextracti128|vbroadcasti128|vpbroadcast[bwdq]|vbroadcasts[sd]"
    r"|vpgather\w+|vgather\w+|vps[lr]lv[dq]|vpsravd|vpmaskmov[dq]|vpblendd|vperm[dq]|vpermps)$"
)
# vp-mnemonics that AVX (not AVX2) already allows on ymm.
_AVX1_VP = re.compile(r"^(?:vptest|vpermil\w+|vperm2f128)$")
_VNNI = re.compile(r"^vpdp[bw]\w+$")


def _classify(raw: str, text: str) -> list[str]:
    """Extensions one instruction belongs to (an instruction may count for several)."""
    try:
        codes = [int(b, 16) for b in raw.split()]
    except ValueError:
        return []
    i = 0
    while i < len(codes) and codes[i] in _PASS_PREFIXES:
        i += 1
    lead = codes[i] if i < len(codes) else -1
    # In 64-bit mode 0x62 can only start an EVEX prefix (BOUND is invalid there).
    evex = lead == 0x62
    vex = lead in (0xC4, 0xC5)
    mnemonic, _, operands = text.partition(" ")
    if mnemonic.startswith("{"):  # "{vex} vpdpbusd ...", "{evex} ..." pseudo-prefixes
        mnemonic, _, operands = operands.strip().partition(" ")
    exts: list[str] = []
    if evex or _EVEX_REGS.search(operands):
        exts.append("avx512")
    if _AMX.match(mnemonic):
        exts.append("amx")
    if vex and not evex:
        if _VNNI.match(mnemonic):
            exts.append("avx_vnni")
        elif _FMA.match(mnemonic):
            exts.append("fma")
        elif mnemonic in _F16C:
            exts.append("f16c")
        elif _AVX2_ALWAYS.match(mnemonic) or (
            mnemonic.startswith("vp") and "%ymm" in operands and not _AVX1_VP.match(mnemonic)
        ):
            exts.append("avx2")
        elif not _AMX.match(mnemonic) and mnemonic.startswith("v"):
            exts.append("avx")
    return exts


def audit_isa(so_path: str | os.PathLike[str], *, max_examples: int = 3) -> IsaCounts:
    """Disassemble every executable section of `so_path` and count instructions per extension.

    objdump's output is streamed line by line: a libggml-cpu disassembly is tens of MB of text.
    """
    path = Path(so_path)
    if not path.is_file():
        raise ToolError(f"Cannot audit {path}: the file does not exist.")
    objdump = which("objdump", "Install binutils (scripts/install-system-deps.sh).")
    result = IsaCounts(str(path))
    cmd = [objdump, "-d", "-w", str(path)]
    env = dict(os.environ, LC_ALL="C")
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        errors="replace",
        bufsize=1 << 20,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            # Instruction lines: "  addr:\t<hex bytes>\t<mnemonic operands>"
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or not parts[0].rstrip().endswith(":"):
                continue
            text = parts[2].strip()
            if not text or text == "(bad)":
                continue
            result.total += 1
            # Fast path: only vector, mask and tile instructions can belong to a counted extension.
            if text[0] not in "vkt{" and not text.startswith(("ldtilecfg", "sttilecfg")):
                continue
            for ext in _classify(parts[1], text):
                result.counts[ext] = result.counts.get(ext, 0) + 1
                if ext in FORBIDDEN:
                    ex = result.examples.setdefault(ext, [])
                    if len(ex) < max_examples:
                        ex.append(f"{parts[0].strip()} {text}")
        stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise ToolError(f"objdump failed on {path} (exit {proc.returncode}): {stderr.strip()[:300]}")
    if result.total == 0:
        raise ToolError(f"objdump found no instructions in {path}: wanted a shared library with code.")
    return result
