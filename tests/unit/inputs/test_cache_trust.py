"""The cache trusts content, not markers, and is safe to share (issue 13 item 6).

Real files, a real HTTP server on loopback, real child processes holding real fcntl locks and a
real SIGKILL in the middle of a commit.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from test_fetch import build_world
from test_fetch_support import (  # noqa: F401  (fixtures)
    cache_dir,
    http_server,
    make_pins,
    tar_gz,
    toy_tree,
    write_tree,
)

from whisper_release.inputs import cache as cache_mod
from whisper_release.inputs import download, fetch
from whisper_release.inputs.cache import Cache
from whisper_release.weights.gittree import tree_hash

PREFIX = "whisper.cpp-0123456789abcdef"


def _github(http_server, tmp_path: Path):  # noqa: F811
    tree = toy_tree()
    want = tree_hash(write_tree(tmp_path / "reference", tree))
    url = http_server.add("/archive/x.tar.gz", tar_gz({f"{PREFIX}/{k}": v for k, v in tree.items()}))

    def mutate(raw: dict) -> None:
        raw["source"]["tree"] = want
        raw["source"]["providers"]["github"] = {"url": url, "strip": PREFIX}

    return make_pins(tmp_path, mutate), want


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)  # the cache makes files read-only; its owner can undo that
    path.write_bytes(data)


def test_file_swapped_inside_cached_source_is_not_a_hit(http_server, cache_dir, tmp_path) -> None:  # noqa: F811
    pins, want = _github(http_server, tmp_path)
    src = fetch.fetch_source(pins, pins.source_provider("github"))
    assert http_server.hits("/archive/x.tar.gz") == 1
    _tamper(src / "src/whisper.cpp", b"// planted\n")
    assert tree_hash(src) != want  # the marker still says verified

    f = fetch._Fetcher(pins)
    again = f.source(pins.source_provider("github"))
    assert http_server.hits("/archive/x.tar.gz") == 2  # fetched again, not trusted on its marker
    assert tree_hash(again) == want and b"planted" not in (again / "src/whisper.cpp").read_bytes()
    assert f.records[0].verified == f"tree {tree_hash(again)}" and f.verified_tree == want

    # Warm and intact: a hit, and the record says what this run computed.
    g = fetch._Fetcher(pins)
    assert g.source(pins.source_provider("github")) == again and g.records[0].status == "cached"
    assert g.records[0].verified == f"tree {want}"
    assert http_server.hits("/archive/x.tar.gz") == 2


def test_blob_changed_in_place_with_same_size_is_fetched_again(http_server, cache_dir, tmp_path,  # noqa: F811
                                                              monkeypatch) -> None:
    tree = toy_tree()
    want = tree_hash(write_tree(tmp_path / "reference", tree))
    members = {f"toy-1.0/whisper.cpp/{k}": v for k, v in tree.items()}
    sdist = tar_gz({"toy-1.0/setup.py": (b"", 0o644), **members})
    index = http_server.add_simple_index("toy", {"toy-1.0.tar.gz": sdist})
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", index)
    digest = hashlib.sha256(sdist).hexdigest()

    def mutate(raw: dict) -> None:
        raw["source"]["tree"] = want
        raw["source"]["providers"]["pypi-sdist"] = {
            "package": "toy", "version": "1.0", "filename": "toy-1.0.tar.gz",
            "subdir": "toy-1.0/whisper.cpp", "sha256": digest, "size": len(sdist),
        }

    pins = make_pins(tmp_path, mutate)
    pkg = fetch.PackageFile("toy", "1.0", "toy-1.0.tar.gz", digest, len(sdist))
    blob = fetch.fetch_package_file(pins, pkg)
    assert http_server.hits("/files/toy/toy-1.0.tar.gz") == 1
    swapped = bytearray(sdist)
    swapped[len(swapped) // 2] ^= 0xFF
    _tamper(blob, bytes(swapped))  # same size: the old size-only check took it

    before = download.request_count
    again = fetch.fetch_package_file(pins, pkg)
    assert download.request_count > before and http_server.hits("/files/toy/toy-1.0.tar.gz") == 2
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest


def test_provenance_records_the_hashes_this_run_computed(http_server, cache_dir, tmp_path,  # noqa: F811
                                                         monkeypatch) -> None:
    w = build_world(http_server, tmp_path, monkeypatch)
    fetch.fetch_profile(w.pins.profile("toy"), w.pins)
    warm = fetch.fetch_profile(w.pins.profile("toy"), w.pins)
    prov = warm.provenance()
    assert prov["source"]["tree"] == tree_hash(warm.source_dir)
    by_item = {r["item"]: r for r in prov["records"]}
    assert by_item["whisper.cpp 1.8.5 source"]["verified"] == f"tree {tree_hash(warm.source_dir)}"
    for name, path in warm.models.items():
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        assert by_item[f"model {name} (ggml f16)"]["verified"] == f"sha256 {got}"


_HOLDER = r"""
import sys
from pathlib import Path
from whisper_release.inputs.cache import Cache
c = Cache(Path(sys.argv[1]))
assert c.has_item("thing", "k", {"v": 1}) is not None
print("using", flush=True)  # from its first look this run holds the item shared, until it exits
sys.stdin.readline()
"""


def _child(code: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _commit(c: Cache, marker: dict, data: bytes) -> Path:
    with c.tmp_dir("x") as staging:
        (staging / "data").write_bytes(data)
        return c.commit_item(staging, "thing", "k", marker)


def test_commit_waits_while_another_run_uses_the_item(tmp_path: Path, monkeypatch) -> None:
    c = Cache(tmp_path / "cache")
    item = _commit(c, {"v": 1}, b"in use")
    cache_mod.release_all()  # this process stops using it; the child below starts
    holder = _child(_HOLDER, str(c.root), stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "using", holder.stderr
        waiting = threading.Event()
        monkeypatch.setattr(cache_mod, "info", lambda msg: waiting.set() if "waiting for" in msg else None)
        # Using it too never waits: runs that only use an item share it.
        assert Cache(c.root).has_item("thing", "k", {"v": 1}) == item and not waiting.is_set()
        done: list[Path] = []
        t = threading.Thread(target=lambda: done.append(_commit(Cache(c.root), {"v": 2}, b"new")))
        t.start()
        assert waiting.wait(timeout=60), "the commit did not wait for the run using the item"
        assert not done and (item / "data").read_bytes() == b"in use"  # untouched while in use
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        t.join(timeout=60)
        assert done and (item / "data").read_bytes() == b"new"
    finally:
        holder.kill()
        holder.wait()
        cache_mod.release_all()


_CRASH_MID_REPLACE = r"""
import os, shutil, signal, sys
from pathlib import Path
from whisper_release.inputs import cache as cache_mod
def rmtree_then_die(path, *a, **k):
    # Delete one data file, then die as a power cut or `kill -9` would, mid-delete.
    for p in sorted(Path(path).rglob("data")):
        p.unlink()
        break
    os.kill(os.getpid(), signal.SIGKILL)
shutil.rmtree = rmtree_then_die
c = cache_mod.Cache(Path(sys.argv[1]))
with c.tmp_dir("x") as staging:
    (staging / "data").write_bytes(b"new")
    c.commit_item(staging, "thing", "k", {"v": 2})
"""


def test_crash_mid_commit_leaves_nothing_a_later_run_trusts(tmp_path: Path) -> None:
    c = Cache(tmp_path / "cache")
    _commit(c, {"v": 1}, b"old")
    cache_mod.release_all()
    proc = _child(_CRASH_MID_REPLACE, str(c.root))
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    later = Cache(c.root)
    for marker in ({"v": 1}, {"v": 2}):
        hit = later.has_item("thing", "k", marker)
        assert hit is None or (hit / "data").is_file(), f"a half-deleted item is trusted: {marker}"
    assert later.has_item("thing", "k", {"v": 1}) is None
    cache_mod.release_all()
