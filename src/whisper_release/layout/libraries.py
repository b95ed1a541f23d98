"""The shipped libraries of an artifact directory: which files, in load order, what each one is,
and the newest glibc / libstdc++ symbol versions they reference.

Runs inside the build image as well (the organizer stage imports it beside artifacts.py): standard
library only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class LayoutError(ValueError):
    """The artifact tree is not what the release contract says."""


# What every per-model directory ships besides the model, in load order (libwhisper first): the
# single-ISA artifact's libraries ([build] cpu_variants = ["haswell"]). With runtime CPU modules
# (`libraries`), libggml-cpu.so.0 gives way to one libggml-cpu-<variant>.so per variant.
CORE_LIBRARIES = ("libwhisper.so", "libggml.so.0", "libggml-base.so.0")
LINKED_CPU_LIBRARY = "libggml-cpu.so.0"
OPENMP_LIBRARY = "libgomp.so.1"
LIBRARIES = (*CORE_LIBRARIES, LINKED_CPU_LIBRARY, OPENMP_LIBRARY)
CPU_FLOOR = "haswell"
# What each shipped library is, in LIBRARIES order.
LIBRARY_ROLES = {
    "libwhisper.so": "whisper: the C API the binding loads",
    "libggml.so.0": "ggml: backend registry (loads the CPU module, when there are several)",
    "libggml-base.so.0": "ggml-base: tensors and graph",
    "libggml-cpu.so.0": "ggml-cpu: the CPU kernels (the ISA floor)",
    "libgomp.so.1": "OpenMP runtime of the builder's GCC",
}


def cpu_module_file(variant: str) -> str:
    """The file of one runtime CPU module (ggml's GGML_BACKEND_DL naming, which its loader scans for)."""
    return f"libggml-cpu-{variant}.so"


def libraries(cpu_variants: Sequence[str] = (CPU_FLOOR,)) -> tuple[str, ...]:
    """The shipped libraries in load order: LIBRARIES for one variant (the single-ISA build), else
    the core libraries, one module per variant (the floor first) and the OpenMP runtime."""
    if len(cpu_variants) <= 1:
        return LIBRARIES
    return (*CORE_LIBRARIES, *(cpu_module_file(v) for v in cpu_variants), OPENMP_LIBRARY)


def library_role(lib: str, cpu_variants: Sequence[str] = (CPU_FLOOR,)) -> str:
    if lib in LIBRARY_ROLES:
        return LIBRARY_ROLES[lib]
    variant = lib.removeprefix("libggml-cpu-").removesuffix(".so")
    floor = " (the floor)" if variant == cpu_variants[0] else ""
    return f"ggml-cpu: the CPU kernels for {variant}{floor}, loaded at run time if this CPU runs them"


def variant_names(build_or_meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The CPU variants of a build.json or artifact.json (absent: the single-ISA floor)."""
    entries = build_or_meta.get("cpu_variants") or [{"name": CPU_FLOOR}]
    return tuple(str(v["name"]) for v in entries)


# ---- ELF symbol versions -------------------------------------------------------------------
_SHT_GNU_VERNEED = 0x6FFFFFFE


def needed_versions(path: Path) -> set[str]:
    """Version names an ELF64 little-endian object requires (its .gnu.version_r), e.g. GLIBC_2.34."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LayoutError(f"{path} is not a 64-bit little-endian ELF file.")
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    names: set[str] = set()
    for _name, sh_type, _flags, _addr, off, _size, link, info, _align, _entsize in sections:
        if sh_type != _SHT_GNU_VERNEED:
            continue
        str_off = sections[link][4]

        def cstr(o: int, base: int = str_off) -> str:
            return data[base + o : data.index(b"\0", base + o)].decode()

        pos = off
        for _ in range(info):  # sh_info = number of Verneed entries
            _ver, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, pos)
            apos = pos + aux
            for _ in range(cnt):
                _hash, _flags2, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                names.add(cstr(name))
                apos += anext
            pos += nxt
    return names


def _max_version(names: Iterable[str], prefix: str) -> str:
    best: tuple[int, ...] = ()
    for n in names:
        m = re.fullmatch(re.escape(prefix) + r"(\d+(?:\.\d+)*)", n)
        if m:
            best = max(best, tuple(int(x) for x in m.group(1).split(".")))
    return ".".join(map(str, best))


def min_runtime(libs: Iterable[Path]) -> tuple[str, str]:
    """(glibc version, GLIBCXX_x version) the libraries need at least: the max over their symbol versions."""
    names: set[str] = set()
    for lib in libs:
        names |= needed_versions(lib)
    glibc = _max_version(names, "GLIBC_")
    glibcxx = _max_version(names, "GLIBCXX_")
    if not glibc:
        raise LayoutError(
            "no GLIBC_ symbol version found in the shipped libraries; they are not glibc-linked."
        )
    return glibc, (f"GLIBCXX_{glibcxx}" if glibcxx else "")
