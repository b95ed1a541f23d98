"""Source providers: each delivers the whisper.cpp tree, which is then proven by its git tree hash.

`github` downloads the tarball of the pinned commit (its bytes are not stable over time, the tree
it holds is); `pypi-sdist` takes the `whisper.cpp/` folder of a pinned sdist. Whatever the
provider, the extracted tree must hash to `[source] tree`, else it is deleted and refused.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import GithubSource, PackageFile, Pins, SdistSource, SourceProvider
from whisper_release.inputs.cache import Cache, make_read_only, remove_tree
from whisper_release.inputs.download import RetryPolicy, download
from whisper_release.weights.gittree import tree_hash

PROVIDERS = ("github", "pypi-sdist")
SOURCE_DIR_NAME = "whisper.cpp"


def _safe_name(name: str, archive: Path) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise VerificationError(
            f"Archive {archive.name} holds an unsafe member {name!r} (absolute or with '..'); refusing to "
            f"extract it: the archive is not the pinned one."
        )
    return norm


def extract_subdir(archive: Path, subdir: str, dest: Path) -> int:
    """Extract the members under `subdir/` of a tar archive into `dest` (prefix stripped).

    Members with absolute paths, '..' or links leaving `dest` are refused (VerificationError);
    exec bits are kept because the tree hash covers them. Returns the number of members extracted.
    """
    subdir = posixpath.normpath(subdir.strip("/"))
    prefix = subdir + "/"
    try:
        with tarfile.open(archive, "r:*") as tf:
            chosen: list[tarfile.TarInfo] = []
            for m in tf.getmembers():
                name = _safe_name(m.name, archive)
                if not name.startswith(prefix):
                    continue
                if m.islnk():
                    # git never produces hard links; one here means a foreign archive.
                    raise VerificationError(
                        f"Archive {archive.name} holds a hard link {m.name!r}, which no pinned source "
                        f"archive has; refusing it."
                    )
                chosen.append(m.replace(name=name[len(prefix) :], deep=False))
            if not chosen:
                raise VerificationError(
                    f"Archive {archive.name} has no folder {subdir!r}; "
                    "check 'strip'/'subdir' in release.toml."
                )
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, members=chosen, filter="data")
    except tarfile.FilterError as e:
        raise VerificationError(
            f"Archive {archive.name} holds an unsafe member ({e}); refusing to extract it."
        ) from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise VerificationError(
            f"Archive {archive.name} cannot be read ({e}); it was not the pinned file."
        ) from None
    return len(chosen)


def source_key(pins: Pins) -> str:
    return pins.source.tree


def cached_source(cache: Cache, pins: Pins) -> tuple[Path, str] | None:
    """The cached tree and the git tree hash computed from it now, or None. The marker alone is not
    trusted (a file changed inside the tree would pass it): the tree is hashed again on every use,
    0.12-0.16 s for the pinned 1,791 files, and a tree that no longer matches is removed."""
    want = source_key(pins)
    cache.use("source", want)
    item = cache.has_item("source", want, {"tree": want})
    if item is None:
        return None
    tree = item / SOURCE_DIR_NAME
    got = tree_hash(tree) if tree.is_dir() else "(missing)"
    if got != want:
        info(f"cached source tree {tree} hashes to {got}, not the pinned {want}; removing it and "
             "fetching again")
        cache.discard("source", want)
        return None
    return tree, got


def fetch_source_tree(
    cache: Cache,
    pins: Pins,
    provider: SourceProvider,
    *,
    fetch_package_file: Callable[[PackageFile], Path],
    policy: RetryPolicy | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Deliver, extract and verify the source tree; returns (tree dir, description for records)."""
    want = source_key(pins)
    origin: dict[str, Any]
    with cache.tmp_dir("source") as staging:
        tree = staging / SOURCE_DIR_NAME
        if isinstance(provider, GithubSource):
            tarball = download(
                provider.url,
                staging / "source.tar.gz",
                what=f"{pins.source.name} tarball",
                policy=policy,
                verified_later=True,
            )
            extract_subdir(tarball, provider.strip, tree)
            tarball.unlink()
            origin = {"url": provider.url}
        elif isinstance(provider, SdistSource):
            pkg = provider.package_file
            sdist = fetch_package_file(pkg)
            extract_subdir(sdist, provider.subdir, tree)
            origin = {
                "package": pkg.name,
                "version": pkg.version,
                "filename": pkg.filename,
                "sha256": pkg.sha256,
                "subdir": provider.subdir,
            }
        else:
            raise ConfigError(
                f"Source provider {provider!r} has no implementation; use one of {', '.join(PROVIDERS)}."
            )
        got = tree_hash(tree)
        if got != want:
            remove_tree(tree)
            raise VerificationError(
                f"Source from provider {provider.name!r} has git tree {got}, but release.toml pins {want}; "
                f"the extracted tree was deleted: the provider delivered different files."
            )
        make_read_only(tree)
        marker = {"tree": got, "provider": provider.name, "commit": pins.source.commit, **origin}
        item = cache.commit_item(staging, "source", want, marker)
    return item / SOURCE_DIR_NAME, marker
