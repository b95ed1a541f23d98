"""The git tree hash of a directory, computed in pure Python.

It is the one pin that verifies a source tree whatever delivered it (a tarball, a clone, an sdist's
subfolder): `git add -A && git write-tree` on the same files gives the same hash. No git needed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

MODE_FILE = b"100644"
MODE_EXEC = b"100755"
MODE_LINK = b"120000"
MODE_TREE = b"40000"


def _object_id(kind: bytes, data: bytes) -> bytes:
    h = hashlib.sha1()
    h.update(kind + b" " + str(len(data)).encode() + b"\0")
    h.update(data)
    return h.digest()


def blob_id(data: bytes) -> str:
    """The git blob id of `data` (what `git hash-object` prints)."""
    return _object_id(b"blob", data).hex()


def _file_id(path: str, size: int) -> bytes:
    # Streamed so a large file never has to sit in memory whole.
    h = hashlib.sha1()
    h.update(b"blob " + str(size).encode() + b"\0")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _tree(path: str) -> bytes | None:
    """Raw id of the tree at `path`, or None when it holds no file (git keeps no empty dirs)."""
    entries: list[tuple[bytes, bytes, bytes]] = []  # (sort key, mode, name) -> id added below
    ids: dict[bytes, bytes] = {}
    with os.scandir(path) as it:
        for entry in it:
            name = os.fsencode(entry.name)
            if name == b".git":
                continue  # git never records its own directory
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                mode, oid, key = MODE_LINK, _object_id(b"blob", os.fsencode(os.readlink(entry.path))), name
            elif stat.S_ISDIR(st.st_mode):
                sub = _tree(entry.path)
                if sub is None:
                    continue
                # git orders a tree entry as if its name ended in "/".
                mode, oid, key = MODE_TREE, sub, name + b"/"
            elif stat.S_ISREG(st.st_mode):
                mode = MODE_EXEC if st.st_mode & stat.S_IXUSR else MODE_FILE
                oid, key = _file_id(entry.path, st.st_size), name
            else:
                continue  # sockets, fifos, devices: git cannot add them either
            entries.append((key, mode, name))
            ids[name] = oid
    if not entries:
        return None
    entries.sort()
    body = b"".join(mode + b" " + name + b"\0" + ids[name] for _key, mode, name in entries)
    return _object_id(b"tree", body)


EMPTY_TREE = _object_id(b"tree", b"").hex()


def tree_hash(root: str | os.PathLike[str]) -> str:
    """Hex git tree id of the directory `root` with every file added (exec bits and symlinks count)."""
    p = Path(root)
    if not p.is_dir():
        raise NotADirectoryError(f"{p} is not a directory")
    raw = _tree(os.fspath(p))
    return EMPTY_TREE if raw is None else raw.hex()
