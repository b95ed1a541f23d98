"""The content-addressed cache every fetched input lives in.

Layout under the root ($WHISPER_RELEASE_CACHE, else $XDG_CACHE_HOME/whisper-release, else
~/.cache/whisper-release):

    blobs/sha256/<hex>            downloaded files pinned by sha256 (wheels, sdists)
    blobs/sha1/<hex>              downloaded files pinned only by SHA-1
    items/<kind>/<key>/           derived items (verified source tree, assets, converted model);
                                  <key> comes from the pinned hashes, and the item's VERIFIED
                                  marker is written last, so a half-made item is never trusted
    tmp/                          work in progress; anything here is garbage after a crash

Everything enters by temp + rename inside the root (same file system, so the rename is atomic).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = "VERIFIED"


def cache_root() -> Path:
    from whisper_release.core import settings

    env: Path | None = settings.get("WHISPER_RELEASE_CACHE")
    if env is not None:
        return env
    xdg: Path | None = settings.get("XDG_CACHE_HOME")
    return ((xdg or Path.home() / ".cache") / "whisper-release").resolve()


def file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def derive_key(*parts: str) -> str:
    """A short stable key for an item made from several pinned inputs."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def remove_tree(path: Path) -> None:
    """Delete a file or a tree. Read-only files go too: only directory write bits matter, and
    the cache never drops those."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else cache_root()

    # ---- blobs -------------------------------------------------------------------------
    def blob_path(self, algo: str, digest: str) -> Path:
        if algo not in ("sha256", "sha1"):
            raise ValueError(f"unsupported digest {algo}")
        return self.root / "blobs" / algo / digest.lower()

    def has_blob(self, algo: str, digest: str, size: int | None = None) -> Path | None:
        """The cached blob if present and of the right size. A blob is only ever renamed into
        place after its hash was checked, so the size is the cheap re-check on reuse."""
        p = self.blob_path(algo, digest)
        if not p.is_file():
            return None
        if size is not None and p.stat().st_size != size:
            p.unlink(missing_ok=True)
            return None
        return p

    # ---- derived items -----------------------------------------------------------------
    def item_path(self, kind: str, key: str) -> Path:
        return self.root / "items" / kind / key

    def read_marker(self, item: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((item / MARKER).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def has_item(self, kind: str, key: str, expect: dict[str, Any]) -> Path | None:
        """The item dir if its marker says it was verified against `expect`; a dir without a
        matching marker is deleted so it cannot be mistaken for a good one later."""
        item = self.item_path(kind, key)
        if not item.exists():
            return None
        marker = self.read_marker(item)
        if marker is not None and all(marker.get(k) == v for k, v in expect.items()):
            return item
        remove_tree(item)
        return None

    def discard(self, kind: str, key: str) -> None:
        remove_tree(self.item_path(kind, key))

    @contextlib.contextmanager
    def tmp_dir(self, label: str = "work") -> Iterator[Path]:
        """A scratch dir inside the cache (same file system as the final place), always removed."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
        try:
            yield d
        finally:
            remove_tree(d)

    def commit_item(self, staging: Path, kind: str, key: str, marker: dict[str, Any]) -> Path:
        """Write the marker into `staging` (last), then rename it to the item's place."""
        (staging / MARKER).write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        final = self.item_path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Another fetch may have finished the same item meanwhile: a verified one stays put
            # (someone may be reading it); anything else makes way.
            if self.read_marker(final) == marker:
                remove_tree(staging)
                return final
            remove_tree(final)
        os.rename(staging, final)
        return final


def make_read_only(root: Path) -> None:
    """Drop write bits from every file under `root`, keeping exec bits (the tree hash counts them).
    Directories stay writable so the cache can still delete the tree."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            mode = os.stat(p).st_mode
            os.chmod(p, stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
