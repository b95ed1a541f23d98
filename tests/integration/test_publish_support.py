"""Shared helpers of the publishing tests (no tests here): a release tree and a running store.

The tree mirrors what the build produces (dist/release_artifacts/): manifest.json plus one
directory per model with libraries, the model, a README and a SHA256SUMS covering the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from whisper_release.publish.push import MiB, TransferSettings
from whisper_release.s3.config import S3Config
from whisper_release.s3.store import EmbeddedStore

# Small parts so a test file of a few MiB goes through multipart upload like a real model does.
TEST_SETTINGS = TransferSettings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                                 max_concurrency=2, max_attempts=3, connect_timeout=2.0, read_timeout=10.0)
BIG = 11 * MiB + 123  # three parts, the last one short


def write_sums(d: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(d.iterdir()) if p.is_file() and p.name != "SHA256SUMS"]
    (d / "SHA256SUMS").write_text("".join(lines))


def make_artifacts(root: Path, models: tuple[str, ...] = ("tiny.en", "base"), big: int = BIG) -> Path:
    """A release tree of random bytes; the first model's weights exceed the multipart threshold."""
    root.mkdir(parents=True, exist_ok=True)
    for i, model in enumerate(models):
        d = root / f"whisper_{model}_xeon"
        d.mkdir()
        for name, size in (("libwhisper.so", 40_000), ("libggml.so.0", 3000), ("libggml-base.so.0", 5000),
                           ("libggml-cpu.so.0", 7000), ("libgomp.so.1", 2000),
                           (f"ggml-{model}-q5_1.bin", big if i == 0 else 300_000)):
            (d / name).write_bytes(os.urandom(size))
        (d / "README.md").write_text(f"# whisper {model} for Xeon\n")
        write_sums(d)
    write_manifest(root, {"models": list(models), "nonce": os.urandom(8).hex()})
    return root


def write_manifest(root: Path, fields: dict | None = None) -> None:
    """manifest.json with the in-toto `subject` list of every other file, as the build writes it."""
    subject = [{"name": rel, "digest": {"sha256": digest}}
               for rel, digest in local_files(root).items() if rel != "manifest.json"]
    (root / "manifest.json").write_text(json.dumps({**(fields or {}), "subject": subject}))


def local_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def stored_files(client, cfg: S3Config, release_key: str) -> dict[str, str]:
    """relpath -> sha256 of each stored object's bytes (read back in full)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=release_key + "/"):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=cfg.bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(release_key) + 1:]] = hashlib.sha256(body).hexdigest()
    return out


@contextlib.contextmanager
def running_store(root: Path, bucket: str = "whisper-test",
                  prefix: str = "ci/whisper") -> Iterator[EmbeddedStore]:
    """An embedded store on runtime-chosen loopback ports, always stopped (process group killed)."""
    store = EmbeddedStore(root, bucket=bucket, prefix=prefix)
    try:
        store.start(timeout=60)
        yield store
    finally:
        store.stop(grace=2.0)
