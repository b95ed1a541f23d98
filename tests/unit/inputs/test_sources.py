"""Source providers end to end against loopback: a tarball (github) and an sdist via the index."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from test_fetch_support import (  # noqa: F401  (fixtures)
    cache_dir,
    cache_files,
    dead_port_url,
    http_server,
    make_pins,
    tar_gz,
    toy_tree,
    write_tree,
)

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.inputs import download, fetch
from whisper_release.inputs.sources import extract_subdir
from whisper_release.weights.gittree import tree_hash

PREFIX = "whisper.cpp-0123456789abcdef"


@pytest.fixture
def toy(tmp_path: Path) -> tuple[dict, str]:
    tree = toy_tree()
    return tree, tree_hash(write_tree(tmp_path / "reference", tree))


def _github_pins(tmp_path: Path, url: str, tree: str):
    def mutate(raw: dict) -> None:
        raw["source"]["tree"] = tree
        raw["source"]["providers"]["github"] = {"url": url, "strip": PREFIX}

    return make_pins(tmp_path, mutate)


def _prefixed(tree: dict, prefix: str) -> dict:
    return {f"{prefix}/{k}": v for k, v in tree.items()}


def test_github_tarball_verified_and_read_only(http_server, cache_dir, tmp_path, toy) -> None:  # noqa: F811
    tree, want = toy
    url = http_server.add(
        "/archive/x.tar.gz", tar_gz(_prefixed(tree, PREFIX), pax_comment="0123456789abcdef")
    )
    pins = _github_pins(tmp_path, url, want)
    src = fetch.fetch_source(pins, pins.source_provider("github"))
    assert tree_hash(src) == want
    assert os.readlink(src / "include/whisper-link.h") == "../src/whisper.cpp"
    mode = (src / "models/download.sh").stat().st_mode
    assert mode & stat.S_IXUSR and not mode & stat.S_IWUSR
    assert not (src / "CMakeLists.txt").stat().st_mode & stat.S_IWUSR
    assert (src.parent / "VERIFIED").is_file()
    assert cache_files(cache_dir)  # the tree is in the cache...
    assert not any(cache_dir.joinpath("tmp").iterdir())  # ...and nothing else is left behind

    # Warm: another provider and a dead server still get the verified tree, with no request at all.
    before = download.request_count
    dead = _github_pins(tmp_path, dead_port_url() + "/gone.tar.gz", want)
    assert fetch.fetch_source(dead, dead.source_provider("github")) == src
    assert fetch.fetch_source(dead, dead.source_provider("pypi-sdist")) == src
    assert download.request_count == before


def test_one_byte_changed_is_refused_and_deleted(http_server, cache_dir, tmp_path, toy) -> None:  # noqa: F811
    tree, want = toy
    bad = dict(tree)
    content, mode = bad["src/whisper.cpp"]
    bad["src/whisper.cpp"] = (content[:-2] + b"1\n", mode)
    url = http_server.add("/archive/x.tar.gz", tar_gz(_prefixed(bad, PREFIX)))
    with pytest.raises(VerificationError) as ei:
        pins = _github_pins(tmp_path, url, want)
        fetch.fetch_source(pins, pins.source_provider("github"))
    msg = str(ei.value)
    assert "'github'" in msg and want in msg and "deleted" in msg
    got = msg.split("git tree ")[1].split(",")[0]
    assert len(got) == 40 and got != want
    assert cache_files(cache_dir) == []


def test_exec_bit_lost_is_refused(http_server, cache_dir, tmp_path, toy) -> None:  # noqa: F811
    tree, want = toy
    bad = dict(tree)
    bad["models/download.sh"] = (bad["models/download.sh"][0], 0o644)
    url = http_server.add("/archive/x.tar.gz", tar_gz(_prefixed(bad, PREFIX)))
    with pytest.raises(VerificationError, match="git tree"):
        pins = _github_pins(tmp_path, url, want)
        fetch.fetch_source(pins, pins.source_provider("github"))
    assert cache_files(cache_dir) == []


def test_pypi_sdist_via_index_then_warm_offline(http_server, cache_dir, tmp_path, toy, monkeypatch) -> None:  # noqa: F811
    tree, want = toy
    sdist = tar_gz({"toy-1.0/setup.py": (b"", 0o644), **_prefixed(tree, "toy-1.0/whisper.cpp")})
    index = http_server.add_simple_index("toy", {"toy-1.0.tar.gz": sdist})
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", index)

    def mutate(raw: dict) -> None:
        raw["source"]["tree"] = want
        raw["source"]["providers"]["pypi-sdist"] = {
            "package": "toy",
            "version": "1.0",
            "filename": "toy-1.0.tar.gz",
            "subdir": "toy-1.0/whisper.cpp",
            "sha256": hashlib.sha256(sdist).hexdigest(),
            "size": len(sdist),
        }

    pins = make_pins(tmp_path, mutate)
    src = fetch.fetch_source(pins, pins.source_provider("pypi-sdist"))
    assert tree_hash(src) == want and not (src / "setup.py").exists()
    assert [p for p, _ in http_server.log] == ["/simple/toy/", "/files/toy/toy-1.0.tar.gz"]
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", dead_port_url() + "/simple")
    before = download.request_count
    assert fetch.fetch_source(pins, pins.source_provider("pypi-sdist")) == src
    assert download.request_count == before


def test_unknown_provider(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Unknown source provider 'svn'"):
        make_pins(tmp_path).source_provider("svn")


@pytest.mark.parametrize(
    "entries, match",
    [
        ({"p/ok": (b"1", 0o644), "p/../../evil": (b"x", 0o644)}, "unsafe member"),
        ({"p/ok": (b"1", 0o644), "/etc/evil": (b"x", 0o644)}, "unsafe member"),
        ({"p/ok": (b"1", 0o644), "p/link": "../../../etc/passwd"}, "unsafe member"),
        ({"p/ok": (b"1", 0o644), "p/abs": "/etc/passwd"}, "unsafe member"),
        ({"p/ok": (b"1", 0o644), "p/hard": ("hardlink", "p/ok")}, "hard link"),
        ({"q/ok": (b"1", 0o644)}, "has no folder 'p'"),
    ],
    ids=["dotdot", "absolute", "symlink-escape", "symlink-absolute", "hardlink", "no-subdir"],
)
def test_unsafe_archives_are_refused(tmp_path: Path, entries: dict, match: str) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz(entries))
    with pytest.raises(VerificationError, match=match):
        extract_subdir(archive, "p", tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"not a tarball at all")
    with pytest.raises(VerificationError, match="cannot be read"):
        extract_subdir(archive, "p", tmp_path / "out")
