"""gittree.tree_hash must equal `git write-tree` on any tree: git itself is the oracle."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisper_release.testing import require_tool
from whisper_release.weights.gittree import EMPTY_TREE, blob_id, tree_hash

# Names git accepts and that sort in interesting ways around "/" (0x2f): "-" and "." sort before it,
# "0" and "_" after; a file "a.b" and a dir "a" trip a naive sort.
NAME = st.text(alphabet="ab.-_0Z", min_size=1, max_size=4).filter(lambda s: s not in (".", "..", ".git"))


def _node(depth: int) -> st.SearchStrategy:
    leaf = st.one_of(
        st.tuples(st.just("file"), st.binary(max_size=64), st.booleans()),
        st.tuples(st.just("link"), NAME),
    )
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.dictionaries(NAME, _node(depth - 1), max_size=4))


TREES = st.dictionaries(NAME, _node(2), max_size=6)


def _write(root: Path, spec: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, node in spec.items():
        p = root / name
        if isinstance(node, dict):
            _write(p, node)  # an empty dict stays an empty dir, which git ignores
        elif node[0] == "file":
            p.write_bytes(node[1])
            p.chmod(0o755 if node[2] else 0o644)
        else:
            os.symlink(node[1], p)  # may dangle: git records the target text only


def _git_tree(root: Path) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(root.parent),
        "GIT_DIR": str(root.parent / "g.git"),
        "GIT_WORK_TREE": str(root),
    }
    subprocess.run(["git", "init", "-q"], env=env, check=True, cwd=root)
    subprocess.run(["git", "config", "core.fileMode", "true"], env=env, check=True, cwd=root)
    subprocess.run(["git", "config", "core.symlinks", "true"], env=env, check=True, cwd=root)
    subprocess.run(["git", "add", "-A", "--force", "."], env=env, check=True, cwd=root)
    out = subprocess.run(["git", "write-tree"], env=env, check=True, cwd=root, capture_output=True, text=True)
    return out.stdout.strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_tree_hash_equals_git_write_tree(spec: dict) -> None:
    require_tool("git")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "work"
        _write(root, spec)
        assert tree_hash(root) == _git_tree(root)


def test_exec_bit_changes_hash(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o644)
    plain = tree_hash(tmp_path)
    (tmp_path / "run.sh").chmod(0o755)
    assert tree_hash(tmp_path) != plain


def test_one_byte_changes_hash(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"hello")
    before = tree_hash(tmp_path)
    (tmp_path / "d" / "f").write_bytes(b"hellp")
    assert tree_hash(tmp_path) != before


def test_empty_dirs_are_ignored(tmp_path: Path) -> None:
    assert tree_hash(tmp_path) == EMPTY_TREE == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    (tmp_path / "a").write_bytes(b"x")
    with_file = tree_hash(tmp_path)
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert tree_hash(tmp_path) == with_file


def test_blob_id_matches_git_hash_object(tmp_path: Path) -> None:
    git = require_tool("git")
    (tmp_path / "f").write_bytes(b"what is up, doc?")
    out = subprocess.run(
        [git, "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True
    )
    assert blob_id(b"what is up, doc?") == out.stdout.strip()


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        tree_hash(tmp_path / "f")


def test_real_world_names_sort_like_git(tmp_path: Path) -> None:
    require_tool("git")
    root = tmp_path / "work"
    _write(
        root,
        {
            "a": {"x": ("file", b"1", False)},
            "a.b": ("file", b"2", True),
            "a-b": ("file", b"", False),
            "a0": {"y": ("link", "../a.b")},
            "A": ("file", b"3", False),
        },
    )
    assert tree_hash(root) == _git_tree(root)
