"""`whisper-release info DIR`: what an artifact directory is, from its artifact.json, and which of its
CPU modules this machine would run (runtime/modules.py: CPUID, then the cached self-test)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whisper_release.core.errors import ConfigError, CpuError, VerificationError
from whisper_release.layout import artifacts as layout
from whisper_release.layout import sbom
from whisper_release.layout.readme import human_size
from whisper_release.runtime import cpu, modules


def artifact_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """artifact.json of DIR, shape-checked (the file's own facts; `pull` and `transcribe` check the bytes)."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"Artifact directory {d} does not exist; pull one first (whisper-release pull).")
    try:
        return layout.load_metadata(d)
    except layout.LayoutError as e:
        raise VerificationError(str(e)) from None


def format_info(meta: dict[str, Any]) -> str:
    """A short human-readable summary of artifact.json."""
    src = meta["whisper_cpp"]
    h = meta["model"].get("hparams", {})
    lines = [
        f"model          {meta['model']['name']} ({h.get('n_text_layer', '?')} text layers, "
        f"{h.get('n_audio_state', '?')} state, vocabulary {h.get('n_vocab', '?')})",
        f"release        {meta['release_version']}",
        f"whisper.cpp    {src['version']} (commit {src['commit']}, tree {src['tree']})",
        f"CPU needs      {', '.join(meta['required_cpu_flags'])}",
        f"runtime needs  glibc >= {meta['min_glibc']}"
        + (f", {meta['min_glibcxx']}" if meta["min_glibcxx"] else ""),
        "model files",
    ]
    for f in meta["model_files"]:
        primary = "  (primary)" if f.get("primary") else ""
        lines.append(f"  {f['name']:<28} {f['type']:<6} {human_size(int(f.get('size', 0)))}{primary}")
    variants = modules.variants_of(meta)
    if variants:
        lines.append(
            f"CPU modules    {'runtime dispatch' if len(variants) > 1 else 'linked (single ISA)'}; "
            f"the floor is {variants[0].name}"
        )
        floor = set(variants[0].cpu_flags)
        for v in variants:
            extra = [f for f in v.cpu_flags if f not in floor]
            lines.append(f"  {v.name:<14} {v.library:<28} {'+ ' + ', '.join(extra) if extra else '(floor)'}")
        if len(variants) > 1:
            lines.append(f"  force one with {modules.FORCE}=<name>")
    lines.append("libraries (load order)")
    lines += [f"  {lib['name']:<28} {lib.get('role', '')}" for lib in meta["libraries"]]
    return "\n".join(lines) + "\n"


def this_cpu(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Which CPU module this machine runs from the artifact, or why it runs none."""
    try:
        cpu.require_flags([str(f) for f in meta["required_cpu_flags"]], f"the artifact {path}")
        return modules.choose(path, meta).as_dict()
    except CpuError as e:
        return {"error": str(e)}


def info_text(path: str | os.PathLike[str], *, as_json: bool = False) -> str:
    """artifact.json as text (then the module this CPU runs, the SBOM's components and licences), or
    the file itself as JSON with `this_cpu` added."""
    meta = artifact_info(path)
    choice = this_cpu(Path(path), meta)
    if as_json:
        return json.dumps({**meta, "this_cpu": choice}, indent=2, sort_keys=True) + "\n"
    try:
        components = sbom.sbom_summary(Path(path))
    except sbom.SbomError as e:
        raise VerificationError(str(e)) from None
    runs = choice.get("error") or modules.Choice(**choice).describe()
    return format_info(meta) + f"this CPU runs  {runs}\n" + "\n" + components
