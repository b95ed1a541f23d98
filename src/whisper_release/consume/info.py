"""`whisper-release info DIR`: what an artifact directory is, from its artifact.json alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.layout import artifacts as layout
from whisper_release.layout.readme import human_size


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
    lines.append("libraries (load order)")
    lines += [f"  {lib['name']:<28} {lib.get('role', '')}" for lib in meta["libraries"]]
    return "\n".join(lines) + "\n"


def info_text(path: str | os.PathLike[str], *, as_json: bool = False) -> str:
    meta = artifact_info(path)
    return json.dumps(meta, indent=2, sort_keys=True) + "\n" if as_json else format_info(meta)
