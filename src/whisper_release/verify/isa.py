"""Instruction-level ISA audit: every instruction of every shipped ELF, against an allow-list.

Each executable section is decoded with iced-x86, which states the CPUID feature(s) every
instruction needs; a mnemonic regex cannot (VEX AVX-IFMA `vpmadd52luq` and AVX-NE-CONVERT look like
plain AVX2 by name). The allow-list is the x86-64 baseline plus the artifact's declared CPU flags
(artifact.json `required_cpu_flags`, from release.toml `[build]`) and what they imply. A runtime CPU
module (libggml-cpu-<variant>.so) is held to its own variant's flags (artifact.json `cpu_variants`),
and must use its variant's ISA at least once.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from whisper_release.core.errors import ToolError, VerificationError
from whisper_release.layout.artifacts import METADATA, load_metadata

# What every x86-64 CPU runs (psABI baseline: CMOV, CX8, FPU, FXSR, MMX, SSE, SSE2, SYSCALL), plus
# hint encodings that older CPUs execute as NOPs: endbr64 (CET_IBT), pause (rep nop), multi-byte nop.
BASELINE = frozenset(
    {
        "INTEL8086", "INTEL186", "INTEL286", "INTEL386", "INTEL486", "X64",
        "CMOV", "CX8", "FPU", "FPU287", "FPU387", "FXSR", "MMX", "SSE", "SSE2", "SYSCALL", "TSC",
        "CPUID", "CLFSH", "MULTIBYTENOP", "PAUSE", "CET_IBT",
    }
)  # fmt: skip

# THE table: a /proc/cpuinfo flag name (as release.toml and artifact.json spell them) -> the
# iced-x86 CpuidFeature names whose instructions that flag allows.
FLAG_FEATURES: dict[str, tuple[str, ...]] = {
    "pni": ("SSE3",),
    "ssse3": ("SSSE3",),
    "sse4_1": ("SSE4_1",),
    "sse4_2": ("SSE4_2",),
    "popcnt": ("POPCNT",),
    "cx16": ("CMPXCHG16B",),
    "lahf_lm": (),  # LAHF/SAHF in 64-bit mode: iced counts them as base 8086 instructions
    "movbe": ("MOVBE",),
    "abm": ("LZCNT",),
    "bmi1": ("BMI1",),
    "bmi2": ("BMI2",),
    "adx": ("ADX",),
    "aes": ("AES",),
    "pclmulqdq": ("PCLMULQDQ",),
    "xsave": ("XSAVE",),
    "avx": ("AVX",),
    "f16c": ("F16C",),
    "fma": ("FMA",),
    "avx2": ("AVX2",),
    "avx_vnni": ("AVX_VNNI",),
    "avx_ifma": ("AVX_IFMA",),
    "avx_ne_convert": ("AVX_NE_CONVERT",),
    "avx_vnni_int8": ("AVX_VNNI_INT8",),
    "avx512f": ("AVX512F",),
    "avx512cd": ("AVX512CD",),
    "avx512bw": ("AVX512BW",),
    "avx512dq": ("AVX512DQ",),
    "avx512vl": ("AVX512VL",),
    "avx512ifma": ("AVX512_IFMA",),
    "avx512vbmi": ("AVX512_VBMI",),
    "avx512_vbmi2": ("AVX512_VBMI2",),
    "avx512_vnni": ("AVX512_VNNI",),
    "avx512_bf16": ("AVX512_BF16",),
    "avx512_fp16": ("AVX512_FP16",),
    "avx512_bitalg": ("AVX512_BITALG",),
    "avx512_vpopcntdq": ("AVX512_VPOPCNTDQ",),
    "gfni": ("GFNI",),
    "vaes": ("VAES",),
    "vpclmulqdq": ("VPCLMULQDQ",),
    "amx_tile": ("AMX_TILE",),
    "amx_int8": ("AMX_INT8",),
    "amx_bf16": ("AMX_BF16",),
}

# A flag also allows what GCC's -m<flag> switches on and what every CPU with that flag has
# (-mavx2 implies -mavx implies -msse4.2 implies -mpopcnt ...). Followed transitively.
IMPLIES: dict[str, tuple[str, ...]] = {
    "ssse3": ("pni",),
    "sse4_1": ("ssse3",),
    "sse4_2": ("sse4_1", "popcnt"),
    "avx": ("sse4_2",),
    "f16c": ("avx",),
    "fma": ("avx",),
    "avx2": ("avx",),
    "avx_vnni": ("avx2",),
    "avx_ifma": ("avx2",),
    "avx_ne_convert": ("avx2",),
    "avx_vnni_int8": ("avx2",),
    "avx512f": ("avx2", "fma", "f16c"),
    **{f: ("avx512f",) for f in ("avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512ifma",
                                 "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bf16",
                                 "avx512_fp16", "avx512_bitalg", "avx512_vpopcntdq")},
    "vaes": ("aes", "avx"),
    "vpclmulqdq": ("pclmulqdq", "avx"),
    "amx_int8": ("amx_tile",),
    "amx_bf16": ("amx_tile",),
}  # fmt: skip

# Features the CPU backend must use at least once, else it is a silent scalar build (FACTS.md: with
# SOURCE_DATE_EPOCH set ggml turns every ISA flag off).
CPU_BACKEND_PREFIX = "libggml-cpu"
CPU_BACKEND_MUST_USE = ("AVX2", "FMA")
UNDECODABLE = "UNDECODABLE"
# Findings kept per (library, feature); the count is always exact.
MAX_EXAMPLES = 5

_SHF_EXECINSTR = 0x4


def expand_flags(flags: Iterable[str]) -> set[str]:
    """The flags plus everything they imply (IMPLIES, transitively)."""
    out: set[str] = set()
    todo = list(flags)
    while todo:
        f = todo.pop()
        if f not in out:
            out.add(f)
            todo.extend(IMPLIES.get(f, ()))
    return out


def allowed_features(flags: Iterable[str]) -> frozenset[str]:
    """iced-x86 CpuidFeature names a library built for `flags` may use."""
    flags = list(flags)
    unknown = [f for f in flags if f not in FLAG_FEATURES and f not in ("sse", "sse2")]
    if unknown:
        raise VerificationError(
            f"The ISA audit does not know the CPU flag(s) {', '.join(unknown)}: wanted names from "
            f"whisper_release.verify.isa.FLAG_FEATURES (as /proc/cpuinfo spells them); add them there."
        )
    allowed = set(BASELINE)
    for f in expand_flags(flags):
        allowed.update(FLAG_FEATURES.get(f, ()))
    return frozenset(allowed)


@dataclass(frozen=True)
class Violation:
    """One instruction a library may not contain."""

    library: str
    offset: int  # file offset of the instruction
    function: str  # nearest preceding function symbol, or "?"
    instruction: str
    feature: str
    allowed: str

    def __str__(self) -> str:
        return (
            f"{self.library}: offset {self.offset:#x} ({self.function}): `{self.instruction}` needs "
            f"{self.feature}, which the allow-list ({self.allowed}) does not hold"
        )


@dataclass
class LibraryAudit:
    """Feature counts of one library's executable sections, and what broke its allow-list."""

    path: str
    allowed_flags: list[str]
    instructions: int = 0
    features: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)  # feature -> exact count
    examples: list[Violation] = field(default_factory=list)  # at most MAX_EXAMPLES per feature
    missing: list[str] = field(default_factory=list)  # CPU_BACKEND_MUST_USE features never used

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["examples"] = [asdict(v) for v in self.examples]
        return d

    def messages(self) -> list[str]:
        out = [str(v) for v in self.examples]
        for feat, n in sorted(self.violations.items()):
            shown = sum(1 for v in self.examples if v.feature == feat)
            if n > shown:
                out.append(f"{self.path}: {n - shown} more instruction(s) needing {feat}")
        out += [
            f"{self.path}: no {feat} instruction at all (wanted its CPU variant's kernels, got a build "
            f"without them)"
            for feat in self.missing
        ]
        return out


def _feature_names() -> dict[int, str]:
    from iced_x86 import CpuidFeature  # the verify extra: imported only when an audit runs

    return {v: k for k, v in vars(CpuidFeature).items() if not k.startswith("_") and isinstance(v, int)}


def audit_library(
    path: str | os.PathLike[str], flags: Iterable[str], *, must_use: Iterable[str] = ()
) -> LibraryAudit:
    """Decode every executable section of the ELF `path` and check each instruction's CPUID
    features against `allowed_features(flags)`."""
    # The verify extra (iced-x86, pyelftools): imported only when an audit runs, so the rest of the
    # verify layer stays importable without them.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from iced_x86 import Code, Decoder

    p = Path(path)
    flags = list(flags)
    allowed = allowed_features(flags)
    allowed_text = "x86-64 baseline + " + (", ".join(flags) or "nothing")
    result = LibraryAudit(str(p), flags)
    names = _feature_names()
    cache: dict[int, tuple[str, ...]] = {}
    counts: Counter[str] = Counter()
    try:
        with p.open("rb") as fh:
            elf = ELFFile(fh)
            if elf["e_machine"] != "EM_X86_64":
                raise VerificationError(
                    f"{p} is a {elf['e_machine']} ELF: wanted x86-64 code; ship only x86-64 libraries."
                )
            funcs = sorted(
                (int(s["st_value"]), s.name)
                for sec in elf.iter_sections()
                if sec["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM")
                for s in sec.iter_symbols()  # type: ignore[attr-defined]
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]
            )
            starts = [a for a, _ in funcs]
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & _SHF_EXECINSTR or sec["sh_type"] != "SHT_PROGBITS":
                    continue
                base, delta = int(sec["sh_addr"]), int(sec["sh_offset"]) - int(sec["sh_addr"])
                for ins in Decoder(64, sec.data(), ip=base):
                    result.instructions += 1
                    code = ins.code
                    feats = cache.get(code)
                    if feats is None:
                        feats = (
                            (UNDECODABLE,)
                            if code == Code.INVALID
                            else tuple(names[f] for f in ins.cpuid_features())
                        )
                        cache[code] = feats
                    for feat in feats:
                        counts[feat] += 1
                        if feat in allowed:
                            continue
                        n = result.violations.get(feat, 0)
                        result.violations[feat] = n + 1
                        if n < MAX_EXAMPLES:
                            i = bisect.bisect_right(starts, ins.ip) - 1
                            result.examples.append(
                                Violation(
                                    p.name,
                                    ins.ip + delta,
                                    funcs[i][1] if i >= 0 else "?",
                                    str(ins) if code != Code.INVALID else f"(bad) byte {ins.ip + delta:#x}",
                                    feat,
                                    allowed_text,
                                )
                            )
    except OSError as e:
        raise ToolError(
            f"Cannot read {p} for the ISA audit ({e.strerror}); wanted a shipped library."
        ) from None
    except ELFError as e:
        raise VerificationError(
            f"{p} is not a readable ELF file ({e}); wanted a shipped x86-64 library."
        ) from None
    if result.instructions == 0:
        raise VerificationError(
            f"{p} has no instructions in executable sections: wanted a library with code."
        )
    result.features = dict(sorted(counts.items()))
    result.missing = [f for f in must_use if not counts.get(f)]
    return result


def shipped_libraries(artifact: Path) -> list[Path]:
    """Every ELF file in an artifact directory (libraries by content, not by name)."""
    out = []
    for p in sorted(artifact.iterdir()):
        if p.is_file() and not p.is_symlink():
            with p.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    out.append(p)
    return out


@dataclass
class ArtifactAudit:
    artifact: str
    flags: list[str]
    libraries: list[LibraryAudit]

    @property
    def ok(self) -> bool:
        return all(lib.ok for lib in self.libraries)

    def messages(self) -> list[str]:
        return [m for lib in self.libraries for m in lib.messages()]

    def as_dict(self) -> dict[str, object]:
        return {
            "artifact": self.artifact,
            "flags": self.flags,
            "ok": self.ok,
            "libraries": {Path(lib.path).name: lib.as_dict() for lib in self.libraries},
        }


def must_use(
    library: Path, variant_flags: Iterable[str] = (), floor_flags: Iterable[str] = ()
) -> tuple[str, ...]:
    """Features `library` must contain at least once: the CPU backend's AVX2 and FMA kernels; for a
    module above the floor, the first feature its variant adds (AVX512F for skylakex, AVX_VNNI for
    alderlake), else it was not built for that variant."""
    if not library.name.startswith(CPU_BACKEND_PREFIX):
        return ()
    added = [f for f in variant_flags if f not in set(floor_flags)]
    return (FLAG_FEATURES[added[0]][0],) if added and FLAG_FEATURES.get(added[0]) else CPU_BACKEND_MUST_USE


def variant_flags(meta: dict[str, object]) -> dict[str, list[str]]:
    """artifact.json `cpu_variants` as library name -> the CPU flags that library may use."""
    out: dict[str, list[str]] = {}
    for v in meta.get("cpu_variants") or []:  # type: ignore[attr-defined]
        out[str(v["library"])] = [str(f) for f in v["cpu_flags"]]
    return out


def audit_artifact(artifact: str | os.PathLike[str], flags: Iterable[str] | None = None) -> ArtifactAudit:
    """Audit every shipped ELF of one artifact directory against `flags` (default: its
    artifact.json `required_cpu_flags`). The CPU backend must also use AVX2 and FMA."""
    d = Path(artifact)
    per_library: dict[str, list[str]] = {}
    if flags is None:
        meta = load_metadata(d)
        flags = [str(f) for f in meta["required_cpu_flags"]]
        per_library = variant_flags(meta)
    flags = list(flags)
    libs = shipped_libraries(d)
    if not any(p.name.startswith(CPU_BACKEND_PREFIX) for p in libs):
        raise VerificationError(
            f"{d} holds no {CPU_BACKEND_PREFIX}*.so: wanted the ggml CPU backend beside libwhisper.so; "
            f"rebuild the artifact."
        )
    audits = [
        audit_library(
            p,
            per_library.get(p.name, flags),
            must_use=must_use(p, per_library.get(p.name, flags), flags),
        )
        for p in libs
    ]
    return ArtifactAudit(str(d), flags, audits)


def artifact_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """`path` itself when it is an artifact directory, else the artifact directories inside it."""
    p = Path(path)
    if (p / METADATA).is_file():
        return [p]
    dirs = sorted(d for d in p.glob("*/") if (d / METADATA).is_file()) if p.is_dir() else []
    if not dirs:
        raise VerificationError(
            f"{p} is neither an artifact directory nor holds any (no {METADATA} found): pass a "
            f"whisper_<model>_xeon directory or the release_artifacts directory."
        )
    return dirs


def table(audits: list[ArtifactAudit]) -> str:
    """Per library: instruction count, the count of each non-baseline feature, and the verdict."""
    lines = []
    for a in audits:
        lines.append(
            f"{a.artifact} (allowed: x86-64 baseline + {', '.join(a.flags)}; a CPU module: its variant's)"
        )
        for lib in a.libraries:
            feats = {k: v for k, v in lib.features.items() if k not in BASELINE}
            verdict = f"VIOLATIONS {sum(lib.violations.values())}" if lib.violations else "ok"
            if lib.missing:
                verdict = f"{'FAIL' if verdict == 'ok' else verdict}: no {', '.join(lib.missing)}"
            shown = " ".join(f"{k}={v}" for k, v in feats.items()) or "baseline only"
            lines.append(f"  {Path(lib.path).name:<28} {lib.instructions:>8} instr  {verdict:<14} {shown}")
    return "\n".join(lines) + "\n"


def audit_command(path: str | os.PathLike[str], *, as_json: bool = False, out: TextIO | None = None) -> None:
    """What `whisper-release audit` does: print the per-library table (or JSON), then raise
    VerificationError naming every finding, so the exit code is non-zero on any violation."""
    audits = [audit_artifact(d) for d in artifact_dirs(path)]
    text = json.dumps([a.as_dict() for a in audits], indent=2) + "\n" if as_json else table(audits)
    (out or sys.stdout).write(text)
    problems = [m for a in audits for m in a.messages()]
    if problems:
        raise VerificationError(
            f"The ISA audit of {path} found {len(problems)} problem(s) (wanted none): "
            + "; ".join(problems)
            + "; rebuild with release.toml [build].cmake_flags."
        )
