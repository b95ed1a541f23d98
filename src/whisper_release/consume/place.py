"""Put a verified directory at DEST without ever clobbering something this process did not create.

A check of DEST before a long download is stale by the time the download ends, and rename(2)
silently replaces an empty directory (or, for files, anything). Linux's renameat2 has the two
atomic operations a pull needs: RENAME_NOREPLACE (fail if DEST exists, whatever it is) and
RENAME_EXCHANGE (swap, for --force, so DEST is never missing). Where the C library or the
filesystem lacks them, an exclusive mkdir claims DEST first and the rename then replaces that
empty claim, which only this process made.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
_renameat2_fn: Any = None
_looked_up = False


def _renameat2() -> Any:
    global _renameat2_fn, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2_fn = fn
    return _renameat2_fn


def rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags): True when done, False when this system or filesystem lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def staging_dir(dest: Path, tag: str = "partial") -> Path:
    """A new empty directory beside `dest` (same filesystem, so the final rename is atomic).

    Made with mkdir, not mkdtemp: mkdtemp's 0700 would become DEST's mode, and DEST should get
    what the umask gives, like any directory the user makes.
    """
    while True:
        path = dest.parent / f".{dest.name}.{tag}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def remove_entry(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a directory tree; absent is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def place_new(src: Path, dest: Path) -> None:
    """Rename `src` to `dest`, atomically failing with FileExistsError if anything is at `dest`."""
    if rename2(src, dest, RENAME_NOREPLACE):
        return
    os.mkdir(dest)  # FileExistsError for anything there, a dangling symlink included
    try:
        os.rename(src, dest)  # replaces only an empty directory: the claim just made
    except OSError as e:
        try:
            os.rmdir(dest)
        except OSError:
            pass  # no longer our empty claim: someone else's, so it stays
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "something was put at the destination", str(dest)) from None
        raise


def replace(src: Path, dest: Path) -> None:
    """Put `src` at `dest` whatever is there (--force), then remove what was there.

    Whatever DEST was (directory, file, symlink), only the entry is removed, never a link's target.
    """
    if not os.path.lexists(dest):
        try:
            place_new(src, dest)
            return
        except FileExistsError:
            pass
    try:
        exchanged = rename2(src, dest, RENAME_EXCHANGE)
    except FileNotFoundError:  # DEST went away meanwhile
        place_new(src, dest)
        return
    if exchanged:
        remove_entry(src)  # the old DEST now lives at src's name
        return
    old = dest.parent / f".{dest.name}.old-{secrets.token_hex(4)}"
    os.rename(dest, old)
    try:
        os.rename(src, dest)
    except OSError:
        os.rename(old, dest)
        raise
    remove_entry(old)
