"""The per-model README: fill packaging/README.template.md with the artifact's real facts.

Standard library only and no package-relative imports: the organizer stage of the Dockerfile runs
this file with the base image's python3 (build.py copies it into the build context).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# sizeof(struct whisper_full_params) in whisper.cpp 1.8.5 (FACTS.md); the README's ctypes example
# passes the struct by value, so this must match the header (an integration test checks it).
FULL_PARAMS_SIZE = 304


class TemplateError(ValueError):
    """The template and the values given to it do not match."""


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace every {{name}}; a placeholder without a value, or a value without one, is an error."""
    wanted = set(_PLACEHOLDER.findall(template))
    missing = sorted(wanted - set(values))
    unused = sorted(set(values) - wanted)
    if missing or unused:
        raise TemplateError(
            f"README template placeholders and values differ: missing values {missing}, "
            f"unused values {unused}; "
            "keep packaging/README.template.md and readme.py in step."
        )
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def human_size(n: int) -> str:
    """Bytes as 'N bytes' plus a binary-prefixed figure, e.g. '31,224,176 bytes, 29.8 MiB'."""
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{n:,} bytes, {size:.1f} {unit}"
    raise AssertionError("unreachable")


def tree(dir_name: str, sizes: Mapping[str, int | None]) -> str:
    """A `tree`-like listing; files with size None (README, SHA256SUMS) are listed without one."""
    names = sorted(sizes)
    width = max(len(n) for n in names)
    lines = [f"{dir_name}/"]
    for i, name in enumerate(names):
        branch = "└── " if i == len(names) - 1 else "├── "
        size = sizes[name]
        lines.append(branch + (f"{name:<{width}}  {size:>13,} bytes" if size is not None else name))
    return "\n".join(lines)


def python_example(readme_text: str) -> str:
    """The first ```python block of a README: what a user would copy."""
    m = _PY_BLOCK.search(readme_text)
    if not m:
        raise TemplateError("README has no ```python block; the template lost its example.")
    return m.group(1)


# What each quantization type is for; docs/performance.md holds the measurements behind it (q4_0's:
# FACTS.md, 2026-12-01, base encoder on the haswell module; WER: docs/verify.md). One entry per type
# core.pins.QUANT_TYPES allows (a test keeps them equal), so the README's table has no blank use.
QUANT_USE = {
    "q4_0": "fastest on AVX2 CPUs (repacked 4-bit kernels: about 40% less encoder time than q5_1), "
    "22% smaller than q5_1, slightly less accurate",
    "q5_1": "the default: smallest file and memory",
    "q8_0": "faster on AVX2 CPUs (about 20% less time than q5_1), 37% larger, more memory",
}


def model_table(files: Sequence[str], types: Sequence[str], sizes: Mapping[str, int | None]) -> str:
    """A markdown table of the shipped model files: type, size, what it is for."""
    rows = ["| file | type | size | use |", "|---|---|---:|---|"]
    for f, t in zip(files, types, strict=True):
        size = sizes[f]
        assert size is not None
        rows.append(f"| `{f}` | {t} | {human_size(size)} | {QUANT_USE.get(t, '')} |")
    return "\n".join(rows)


def cpu_module_values(meta: Mapping[str, Any]) -> dict[str, str]:
    """The README's CPU-module prose and table, from artifact.json `cpu_variants`."""
    variants = list(meta.get("cpu_variants") or [])
    if len(variants) <= 1:
        return {
            "cpu_modules_summary": "This is the single-ISA build: one CPU library, linked in, runs "
            "everywhere the floor does.",
            "cpu_modules_table": "One CPU library, `libggml-cpu.so.0`, built for the floor and linked in; "
            "nothing is chosen at run time.",
            "cpu_library_loading": "`libggml.so.0` needs `libggml-cpu.so.0`",
        }
    floor = variants[0]
    floor_flags = set(floor["cpu_flags"])
    rows = ["| module | file | uses beyond the floor |", "|---|---|---|"]
    for v in variants:
        extra = [str(f) for f in v["cpu_flags"] if f not in floor_flags]
        rows.append(f"| {v['name']} | `{v['library']}` | {', '.join(extra) or '(the floor)'} |")
    names = ", ".join(str(v["name"]) for v in variants[1:])
    return {
        "cpu_modules_summary": f"Newer CPUs run their own kernels: one CPU module per variant ({names}); "
        f"the best one this CPU runs is chosen when the library is loaded.",
        "cpu_modules_table": "\n".join(rows)
        + f"\n\nThe floor is `{floor['name']}`: it runs on every CPU this directory supports. At load time "
        "the program registers one module with ggml (`ggml_backend_load_all_from_path(dir)` picks the "
        "highest-scoring one by CPUID, as the example does; whisper-release also self-tests a module "
        "above the floor before it trusts it, and tells which it chose: `whisper-release info "
        '<dir>`). To force one, register only that file: `ggml_backend_load("<dir>/libggml-cpu-'
        f'{floor["name"]}.so")` instead, or with whisper-release set `WHISPER_RELEASE_CPU_MODULE='
        f"{floor['name']}`. Without any registered module whisper.cpp has no CPU backend and cannot "
        "load a model.",
        "cpu_library_loading": "`libggml.so.0` loads one `libggml-cpu-<variant>.so` at run time "
        "(see CPU modules)",
    }


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def readme_values(
    *, meta: Mapping[str, Any], dir_name: str, sizes: Mapping[str, int | None], licences: str
) -> dict[str, object]:
    """Everything the template needs, from the directory's artifact.json (one source of facts) and
    the sizes of its files."""
    flags = [str(f) for f in meta["required_cpu_flags"]]
    source = meta["whisper_cpp"]
    files = list(meta["model_files"])
    files.sort(key=lambda f: not f["primary"])  # the primary first: what the example loads
    model_files = [str(f["name"]) for f in files]
    types = [str(f["type"]) for f in files]
    model_file = model_files[0]
    model_size = sizes[model_file]
    assert model_size is not None
    glibcxx = str(meta["min_glibcxx"])
    # GCC release whose libstdc++ first exports a GLIBCXX_3.4.N version (libstdc++ ABI docs).
    glibcxx_gcc = {28: "11", 29: "11", 30: "12", 31: "13", 32: "13", 33: "14"}
    gcc_major = (
        glibcxx_gcc.get(version_tuple(glibcxx.split("_", 1)[1])[-1], "the matching") if glibcxx else "any"
    )
    return {
        "whisper_version": source["version"],
        "model": meta["model"]["name"],
        "quantize": ", ".join(types),
        "release_version": meta["release_version"],
        "source_commit": source["commit"],
        "source_tree": source["tree"],
        "tree": tree(dir_name, sizes),
        "dir_name": dir_name,
        "model_file": model_file,
        "model_size": human_size(model_size),
        "model_table": model_table(model_files, types, sizes),
        "full_params_size": FULL_PARAMS_SIZE,
        "glibc": meta["min_glibc"],
        "glibcxx": glibcxx or "no GLIBCXX version",
        "gcc_major": gcc_major,
        "cpu_flags": ", ".join(f.upper().replace("_", ".") for f in flags),
        "cpu_flags_regex": "|".join(flags),
        "cpu_flags_count": len(flags),
        "licences": licences,
        **cpu_module_values(meta),
    }
