"""The ctypes structures against the C compiler's view of the verified whisper.h.

A C probe compiled here prints sizeof and offsetof of every field (nested ones included); the
field names themselves are parsed from the header, so a field added upstream cannot go unnoticed.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from whisper_release.runtime import binding
from whisper_release.testing import require_tool, strict

pytestmark = pytest.mark.integration

STRUCTS = {
    "whisper_context_params": binding.whisper_context_params,
    "whisper_full_params": binding.whisper_full_params,
    "whisper_vad_params": binding.whisper_vad_params,
    "whisper_aheads": binding.whisper_aheads,
    "whisper_ahead": binding.whisper_ahead,
    "whisper_grammar_element": binding.whisper_grammar_element,
}


def _source_dir() -> Path:
    env = os.environ.get("WHISPER_RELEASE_SOURCE_DIR")
    if env:
        return Path(env)
    try:
        from whisper_release.core.pins import load_pins
        from whisper_release.inputs import fetch
    except ImportError:
        fetch = None  # type: ignore[assignment]
    if fetch is not None and hasattr(fetch, "fetch_source"):
        pins = load_pins()
        return Path(fetch.fetch_source(pins, pins.profile("offline").source))
    dev = Path("/tmp/vsrc/pywhispercpp-1.5.1/whisper.cpp")
    if dev.is_dir() and not strict():
        return dev
    pytest.fail(
        "no verified whisper.cpp source: set WHISPER_RELEASE_SOURCE_DIR or run invoke fetch"
    )


@pytest.fixture(scope="module")
def source_dir() -> Path:
    d = _source_dir()
    assert (d / "include" / "whisper.h").is_file(), d
    return d


def _fields(struct: type[ctypes.Structure], prefix: str = "") -> Iterator[tuple[str, int, int]]:
    """(C member path, offset, size) of every field, nested structures flattened."""
    for name, ctype, *_bits in struct._fields_:
        desc = getattr(struct, name)
        yield prefix + name, desc.offset, desc.size
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            for sub, off, size in _fields(ctype, prefix + name + "."):
                yield sub, desc.offset + off, size


def _probe_source(structs: dict[str, type[ctypes.Structure]]) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "whisper.h"', "int main(void) {"]
    for cname, struct in structs.items():
        lines.append(f'  printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for path, _, _ in _fields(struct):
            lines.append(
                f'  printf("{cname}.{path} %zu %zu\\n", offsetof(struct {cname}, {path}), '
                f"sizeof(((struct {cname} *)0)->{path}));"
            )
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _header_members(header: str, struct_name: str) -> list[str]:
    """Member names of `struct <name> { ... }` in declaration order, nested anonymous structs as a.b."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", header, flags=re.S)
    m = re.search(r"(?:typedef\s+)?struct\s+" + re.escape(struct_name) + r"\s*\{", text)
    assert m, f"struct {struct_name} not found in whisper.h"
    body, depth, i = [], 1, m.end()
    while depth:
        c = text[i]
        depth += c == "{"
        depth -= c == "}"
        body.append(c)
        i += 1
    return _members("".join(body[:-1]))


def _members(body: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(body):
        nested = re.match(r"\s*struct\s*\{", body[i:])
        if nested:
            start = i + nested.end()
            depth, j = 1, start
            while depth:
                depth += body[j] == "{"
                depth -= body[j] == "}"
                j += 1
            name_m = re.match(r"\s*(\w+)\s*;", body[j:])
            assert name_m
            out.append(name_m.group(1))
            out += [name_m.group(1) + "." + n for n in _members(body[start : j - 1])]
            i = j + name_m.end()
            continue
        semi = body.find(";", i)
        if semi < 0:
            break
        decl = body[i:semi].strip()
        if decl:
            out.append(re.findall(r"\w+", decl)[-1])
        i = semi + 1
    return out


def test_struct_layout_matches_c_probe(source_dir: Path, tmp_path: Path) -> None:
    gcc = require_tool("gcc", "compiles the struct-layout probe")
    probe = tmp_path / "probe.c"
    probe.write_text(_probe_source(STRUCTS))
    exe = tmp_path / "probe"
    subprocess.run(
        [
            gcc,
            "-std=c11",
            "-I",
            str(source_dir / "include"),
            "-I",
            str(source_dir / "ggml" / "include"),
            str(probe),
            "-o",
            str(exe),
        ],
        check=True,
    )
    c_view: dict[str, tuple[int, ...]] = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        key, *nums = line.split()
        c_view[key] = tuple(int(n) for n in nums)

    mismatches = []
    for cname, struct in STRUCTS.items():
        if c_view[cname] != (ctypes.sizeof(struct),):
            mismatches.append(f"sizeof {cname}: C {c_view[cname][0]}, ctypes {ctypes.sizeof(struct)}")
        for path, off, size in _fields(struct):
            if c_view[f"{cname}.{path}"] != (off, size):
                mismatches.append(
                    f"{cname}.{path}: C (offset, size) {c_view[f'{cname}.{path}']}, ctypes {(off, size)}"
                )
    assert not mismatches, "\n".join(mismatches)
    # The numbers the C API documents (FACTS.md): a check that the probe measured the real thing.
    assert c_view["whisper_context_params"] == (48,)
    assert c_view["whisper_full_params"] == (304,)


def test_every_header_field_is_bound(source_dir: Path) -> None:
    header = (source_dir / "include" / "whisper.h").read_text()
    for cname, struct in STRUCTS.items():
        ours = [path for path, _, _ in _fields(struct)]
        # ctypes also lists the members of named nested struct types (dtw_aheads.n_heads, ...);
        # the header parse only expands anonymous ones, so compare top level plus anonymous nests.
        theirs = _header_members(header, cname)
        assert [p for p in ours if "." not in p] == [p for p in theirs if "." not in p], cname
        for p in theirs:
            assert p in ours, f"{cname}.{p} is in whisper.h but not in the ctypes binding"
