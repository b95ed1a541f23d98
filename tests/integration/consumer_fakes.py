"""A generated release tree (random bytes, real SHA256SUMS and manifest) for pull tests.

It stands in for dist/release_artifacts only where the file contents do not matter: pull
verifies bytes, never what they mean. Uploading goes through the real publisher when present.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILES = (
    "libwhisper.so",
    "libggml.so.0",
    "libggml-base.so.0",
    "libggml-cpu.so.0",
    "libgomp.so.1",
    "README.md",
    "sbom.cdx.json",
    "licenses/GPL-3",  # artifacts hold a subdirectory: pull must recreate it
)


def make_release_tree(root: Path, models=("base", "tiny.en"), size: int = 300_000) -> Path:
    """Write manifest.json + whisper_<model>_xeon/ dirs like the build's, with random contents."""
    root.mkdir(parents=True, exist_ok=True)
    subjects = []
    for model in models:
        d = root / f"whisper_{model}_xeon"
        d.mkdir()
        names = [*FILES, f"ggml-{model}-q5_1.bin"]
        lines = []
        for name in names:
            data = os.urandom(size if name.endswith(".bin") else 4096)
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            lines.append(f"{digest}  {name}\n")
            subjects.append({"name": f"{d.name}/{name}", "digest": {"sha256": digest}})
        sums = "".join(sorted(lines, key=lambda line: line.split()[1])).encode()
        (d / "SHA256SUMS").write_bytes(sums)
        subjects.append(
            {"name": f"{d.name}/SHA256SUMS", "digest": {"sha256": hashlib.sha256(sums).hexdigest()}}
        )
    (root / "manifest.json").write_text(json.dumps({"subject": subjects}, indent=2))
    return root


def upload_tree(client, bucket: str, prefix: str, version: str, tree: Path, *, manifest: bool = True) -> None:
    """Mirror the publisher's layout: every file with its sha256 in metadata, manifest.json last."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and p.name != "manifest.json")
    if manifest:
        files.append(tree / "manifest.json")
    for p in files:
        data = p.read_bytes()
        key = "/".join(x for x in (prefix, version, p.relative_to(tree).as_posix()) if x)
        client.put_object(
            Bucket=bucket, Key=key, Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()}
        )
