"""The cache's location rules and its trust rules (marker written last, size re-check)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from whisper_release.inputs.cache import Cache, cache_root, derive_key, make_read_only, remove_tree


def test_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WHISPER_RELEASE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == (tmp_path / "home" / ".cache" / "whisper-release").resolve()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == (tmp_path / "xdg" / "whisper-release").resolve()
    monkeypatch.setenv("WHISPER_RELEASE_CACHE", str(tmp_path / "mine"))
    assert cache_root() == (tmp_path / "mine").resolve()


def test_blob_with_wrong_size_is_dropped(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    digest = hashlib.sha256(b"12345").hexdigest()
    p = c.blob_path("sha256", digest.upper())
    assert p.name == digest
    p.parent.mkdir(parents=True)
    p.write_bytes(b"12345")
    assert c.has_blob("sha256", digest, 5) == p
    assert c.has_blob("sha256", digest, 6) is None
    assert not p.exists()
    with pytest.raises(ValueError):
        c.blob_path("md5", "00")


def test_item_trusted_only_with_matching_marker(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    with c.tmp_dir("x") as staging:
        (staging / "data").write_text("hi")
        item = c.commit_item(staging, "thing", "k1", {"tree": "abc"})
    assert not any((tmp_path / "tmp").iterdir())
    assert c.has_item("thing", "k1", {"tree": "abc"}) == item
    assert c.has_item("thing", "k1", {"tree": "other"}) is None
    assert not item.exists()  # a mismatching item is removed, not kept around

    with c.tmp_dir("y") as staging:
        (staging / "data").write_text("hi")
        item = c.commit_item(staging, "thing", "k2", {"tree": "abc"})
    (item / "VERIFIED").write_text("{not json")
    assert c.has_item("thing", "k2", {"tree": "abc"}) is None and not item.exists()


def test_tmp_dir_removed_on_error(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    with pytest.raises(RuntimeError), c.tmp_dir("x") as staging:
        (staging / "half").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_read_only_tree_keeps_exec_bit_and_can_be_removed(tmp_path: Path) -> None:
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "run").write_bytes(b"x")
    (tmp_path / "t" / "d" / "run").chmod(0o755)
    (tmp_path / "t" / "f").write_bytes(b"y")
    make_read_only(tmp_path / "t")
    assert (tmp_path / "t" / "d" / "run").stat().st_mode & 0o777 == 0o555
    assert (tmp_path / "t" / "f").stat().st_mode & 0o777 == 0o444
    remove_tree(tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_derive_key_is_stable_and_separates_parts() -> None:
    assert derive_key("a", "bc") == derive_key("a", "bc")
    assert derive_key("a", "bc") != derive_key("ab", "c")
    assert len(derive_key("x")) == 32


def test_commit_when_another_run_finished_first(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    with c.tmp_dir("a") as first:
        (first / "data").write_text("first")
        item = c.commit_item(first, "thing", "k", {"tree": "abc"})
    with c.tmp_dir("b") as second:
        (second / "data").write_text("second")
        assert c.commit_item(second, "thing", "k", {"tree": "abc"}) == item
    assert (item / "data").read_text() == "first"  # the verified item in use stays put
    assert list((tmp_path / "tmp").iterdir()) == []
    with c.tmp_dir("c") as third:
        (third / "data").write_text("third")
        c.commit_item(third, "thing", "k", {"tree": "new"})
    assert (item / "data").read_text() == "third"
