"""`pull` under accident and attack (issue 13 items 1, 3, 4, 13), against the real embedded SeaweedFS.

Releases are generated trees (random bytes, real SHA256SUMS and manifest) published with the real
publisher; network faults come from a real TCP proxy that cuts responses (fault_proxy.py). Two
stand-ins, each saying why: a client wrapper that creates DEST at the moment the download starts
(standing for another process; no timing race is needed), and none else.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import pty
import select
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from whisper_release.consume import pull
from whisper_release.core.errors import ConfigError, FetchError, PublishError, VerificationError
from whisper_release.publish import push as publish
from whisper_release.s3.store import EmbeddedStore

sys.path.insert(0, str(Path(__file__).parent))
from consumer_fakes import make_release_tree, upload_tree  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

pytestmark = pytest.mark.integration
MODEL = "ggml-base-q5_1.bin"


@pytest.fixture(scope="module")
def store_config(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("store"), bucket="pull-faults", prefix="rel")
    cfg = store.start()
    try:
        yield cfg
    finally:
        store.stop()


def _at(cfg, prefix: str):
    return dataclasses.replace(cfg, prefix=prefix)


@pytest.fixture(scope="module")
def one_release(store_config, tmp_path_factory):
    """One complete release (base only) under its own prefix, published by the real publisher."""
    cfg = _at(store_config, "one")
    tree = make_release_tree(tmp_path_factory.mktemp("one") / "release_artifacts", models=("base",))
    publish.push(tree, cfg, version="1.0.0", create_bucket=True, progress=False)
    return cfg, tree


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _env(cfg, endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_"))}
    env.update(cfg.client_env())
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env["WHISPER_RELEASE_BUCKET"] = cfg.bucket
    env["WHISPER_RELEASE_PREFIX"] = cfg.prefix
    return env


def _cli_argv(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("whisper-release")), *args]


def _cli(cfg, *args: str, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli_argv(*args), env=_env(cfg, endpoint), capture_output=True, text=True, timeout=300
    )


# ---- 1. DEST safety -------------------------------------------------------------------------


class _DestAppearsDuringDownload:
    """The real client, except that reading the model file first creates DEST, as another process
    could during a long download (a wrapper makes the moment certain instead of racing for it)."""

    def __init__(self, client, make_dest) -> None:
        self._client = client
        self._make_dest = make_dest
        self.made = False

    def __getattr__(self, name):
        return getattr(self._client, name)

    def _maybe(self, key: str) -> None:
        if key.endswith(MODEL) and not self.made:
            self.made = True
            self._make_dest()

    def download_file(self, bucket, key, *args, **kwargs):
        self._maybe(key)
        return self._client.download_file(bucket, key, *args, **kwargs)

    def get_object(self, **kwargs):
        self._maybe(kwargs["Key"])
        return self._client.get_object(**kwargs)


def test_dest_that_appears_during_the_download_is_kept(one_release, tmp_path):
    cfg, _ = one_release
    dest = tmp_path / "dest"

    def make_dest() -> None:
        dest.mkdir()
        (dest / "theirs.txt").write_text("made by someone else while pull was downloading")

    real = pull.remote_from_config(cfg)
    remote = pull.Remote(_DestAppearsDuringDownload(real.client, make_dest), real.bucket, real.prefix)
    with pytest.raises(ConfigError, match="appeared while release 1.0.0 whisper_base_xeon was downloading"):
        pull.pull(remote, "1.0.0", "base", dest, progress=False)
    assert remote.client.made
    assert _snapshot(dest) == {"theirs.txt": b"made by someone else while pull was downloading"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_empty_dest_that_appears_during_the_download_is_kept(one_release, tmp_path):
    # rename(2) would silently replace an empty directory: the no-replace rename must not.
    cfg, _ = one_release
    dest = tmp_path / "dest"
    real = pull.remote_from_config(cfg)
    remote = pull.Remote(_DestAppearsDuringDownload(real.client, dest.mkdir), real.bucket, real.prefix)
    ino = None
    with pytest.raises(ConfigError, match="appeared while"):
        try:
            pull.pull(remote, "1.0.0", "base", dest, progress=False)
        finally:
            ino = dest.stat().st_ino if dest.exists() else None
    assert dest.is_dir() and list(dest.iterdir()) == [] and ino is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_dangling_symlink_dest_is_one_sentence(one_release, tmp_path):
    cfg, tree = one_release
    dest = tmp_path / "current"
    dest.symlink_to(tmp_path / "gone")
    bad = _cli(cfg, "pull", "--release", "1.0.0", "--model", "base", "--dest", str(dest), "--no-progress")
    assert bad.returncode == ConfigError.exit_code, bad.stderr
    assert f"{dest} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in bad.stderr
    assert bad.stderr.count("\n") == 1  # one sentence, no NotADirectoryError traceback
    assert dest.is_symlink()
    ok = _cli(cfg, "pull", "--release", "1.0.0", "--model", "base", "--dest", str(dest), "--force",
              "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert not dest.is_symlink() and _snapshot(dest) == _snapshot(tree / "whisper_base_xeon")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


def test_pulled_directory_and_files_get_their_modes_from_the_umask(one_release, tmp_path):
    cfg, _ = one_release
    remote = pull.remote_from_config(cfg)
    old = os.umask(0o027)
    try:
        pull.pull(remote, "1.0.0", "base", tmp_path / "dest", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "dest").stat().st_mode) == 0o750
    entries = list((tmp_path / "dest").rglob("*"))
    assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_file()} == {0o640}
    assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_dir()} <= {0o750}  # licenses/


def test_force_onto_a_plain_file_leaves_no_old_copy(one_release, tmp_path):
    cfg, tree = one_release
    dest = tmp_path / "dest"
    dest.write_text("a file")
    with pytest.raises(ConfigError, match="already exists"):
        pull.pull(pull.remote_from_config(cfg), "1.0.0", "base", dest, progress=False)
    assert dest.read_text() == "a file"
    pull.pull(pull.remote_from_config(cfg), "1.0.0", "base", dest, force=True, progress=False)
    assert _snapshot(dest) == _snapshot(tree / "whisper_base_xeon")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_dest_in_a_folder_that_cannot_be_made_is_one_sentence(one_release, tmp_path):
    # (root ignores permission bits, so a parent that is a plain file stands for an unwritable one)
    cfg, _ = one_release
    (tmp_path / "afile").write_text("x")
    bad = _cli(cfg, "pull", "--release", "1.0.0", "--model", "base", "--dest", str(tmp_path / "afile" / "d"))
    assert bad.returncode == ConfigError.exit_code, bad.stderr
    assert f"Cannot create a directory in {tmp_path / 'afile'}" in bad.stderr
    assert bad.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ---- 3. manifest and SHA256SUMS disagree ------------------------------------------------------


def test_manifest_and_sums_disagreeing_names_both_objects_and_the_file(store_config, tmp_path):
    cfg = _at(store_config, "disagree")
    tree = make_release_tree(tmp_path / "t", models=("base",))
    d = tree / "whisper_base_xeon"
    (d / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n"
                for n in (p.relative_to(d).as_posix() for p in sorted(d.rglob("*")) if p.is_file())
                if n not in ("SHA256SUMS", "README.md"))
    )
    # The manifest still lists README.md and the old SHA256SUMS digest: the two records disagree.
    remote = pull.remote_from_config(cfg)
    upload_tree(remote.client, remote.bucket, remote.prefix, "2.0.0", tree)
    (tree / "whisper_base_xeon" / "README.md").unlink()
    with pytest.raises(VerificationError) as e:
        pull.pull(remote, "2.0.0", "base", tmp_path / "dest", progress=False)
    msg = str(e.value)
    assert "s3://pull-faults/disagree/2.0.0/manifest.json and " in msg
    assert "s3://pull-faults/disagree/2.0.0/whisper_base_xeon/SHA256SUMS disagree" in msg
    assert "README.md is in the manifest but not in SHA256SUMS" in msg
    assert "SHA256SUMS: the manifest says sha256" in msg
    assert not (tmp_path / "dest").exists()


# ---- 4. latest.json ---------------------------------------------------------------------------


def _get_latest(cfg) -> dict:
    remote = pull.remote_from_config(cfg)
    return json.loads(remote.client.get_object(Bucket=cfg.bucket, Key=cfg.key("latest.json"))["Body"].read())


def test_latest_moves_only_forward_unless_forced(store_config, tmp_path):
    cfg = _at(store_config, "order")
    remote = pull.remote_from_config(cfg)
    trees = {}
    for v in ("1.8.5-r2", "1.8.5-r10", "1.8.5-r3"):
        trees[v] = make_release_tree(tmp_path / v, models=("base",), size=2000)
        publish.push(trees[v], cfg, version=v, progress=False)
    # r3 was published last, but r10 is the higher version: latest stays at r10.
    assert pull.pull(remote, "latest", "base", tmp_path / "a", progress=False).version == "1.8.5-r10"
    assert _get_latest(cfg)["version"] == "1.8.5-r10"
    # A push --force of an older version (new content) does not make it latest either.
    forced = make_release_tree(tmp_path / "again", models=("base",), size=2000)
    publish.push(forced, cfg, version="1.8.5-r2", force=True, progress=False)
    assert pull.pull(remote, "latest", "base", tmp_path / "b", progress=False).version == "1.8.5-r10"
    # Asked explicitly, it moves back, with the manifest digest of the release it names.
    publish.push(forced, cfg, version="1.8.5-r2", force_latest=True, progress=False)
    latest = _get_latest(cfg)
    assert latest == {"version": "1.8.5-r2",
                      "manifest_sha256": hashlib.sha256((forced / "manifest.json").read_bytes()).hexdigest()}
    res = pull.pull(remote, "latest", "base", tmp_path / "c", progress=False)
    assert res.version == "1.8.5-r2"
    assert _snapshot(tmp_path / "c") == _snapshot(forced / "whisper_base_xeon")


def test_list_marks_the_release_latest_json_names(store_config, tmp_path):
    cfg = _at(store_config, "listing")
    for v in ("2.0.0", "1.0.0"):  # 1.0.0 lands last but is older
        publish.push(make_release_tree(tmp_path / v, models=("base",), size=2000), cfg, version=v,
                     progress=False)
    listed = _cli(cfg, "pull", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["version"]: r["latest"] for r in json.loads(listed.stdout)} == {"1.0.0": False, "2.0.0": True}
    plain = _cli(cfg, "pull", "--list")
    assert "latest: 2.0.0 (s3://pull-faults/listing/latest.json)" in plain.stderr


def test_latest_without_a_pointer_is_one_sentence(store_config, tmp_path):
    cfg = _at(store_config, "nopointer")
    remote = pull.remote_from_config(cfg)
    upload_tree(remote.client, remote.bucket, remote.prefix, "1.0.0",
                make_release_tree(tmp_path / "t", models=("base",), size=2000))
    bad = _cli(cfg, "pull", "--model", "base", "--dest", str(tmp_path / "d"))
    assert bad.returncode == ConfigError.exit_code
    assert (
        "No release is marked latest in s3://pull-faults/nopointer: "
        "s3://pull-faults/nopointer/latest.json does not exist (complete releases: 1.0.0)"
    ) in bad.stderr
    assert bad.stderr.count("\n") == 1
    assert not (tmp_path / "d").exists()
    listed = _cli(cfg, "pull", "--list")
    assert listed.returncode == 0 and "latest: none" in listed.stderr


def test_latest_whose_manifest_changed_is_refused(store_config, tmp_path):
    cfg = _at(store_config, "changed")
    remote = pull.remote_from_config(cfg)
    tree = make_release_tree(tmp_path / "t", models=("base",), size=2000)
    publish.push(tree, cfg, version="1.0.0", progress=False)
    assert pull.pull(remote, "latest", "base", tmp_path / "ok", progress=False).version == "1.0.0"
    # The manifest replaced behind the publisher's back (same files, so every other check passes).
    key = cfg.key("1.0.0", "manifest.json")
    data = (tree / "manifest.json").read_bytes() + b"\n"
    remote.client.put_object(Bucket=cfg.bucket, Key=key, Body=data,
                             Metadata={"sha256": hashlib.sha256(data).hexdigest()})
    with pytest.raises(VerificationError, match=r"latest\.json says release 1\.0\.0's manifest has sha256"):
        pull.pull(remote, "latest", "base", tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


def test_an_invalid_pointer_is_replaced_only_with_force_latest(store_config, tmp_path):
    cfg = _at(store_config, "badpointer")
    remote = pull.remote_from_config(cfg)
    remote.client.put_object(Bucket=cfg.bucket, Key=cfg.key("latest.json"), Body=b"<html>")
    tree = make_release_tree(tmp_path / "t", models=("base",), size=2000)
    with pytest.raises(PublishError, match=r"latest\.json is not a valid pointer, so it was not replaced"):
        publish.push(tree, cfg, version="1.0.0", create_bucket=True, progress=False)
    with pytest.raises(VerificationError, match="is not a latest-release pointer"):
        pull.pull(remote, "latest", "base", tmp_path / "d", progress=False)
    publish.push(tree, cfg, version="1.0.0", force_latest=True, progress=False)
    assert pull.pull(remote, "latest", "base", tmp_path / "d", progress=False).version == "1.0.0"


def test_a_dry_run_push_leaves_the_pointer_alone(store_config, tmp_path):
    cfg = _at(store_config, "dry")
    publish.push(make_release_tree(tmp_path / "t", models=("base",), size=2000), cfg, version="1.0.0",
                 dry_run=True, progress=False)
    remote = pull.remote_from_config(cfg)
    assert pull.read_latest(remote) is None


# ---- 13. the transfer manager: retries, ranged GETs, one sentence, bars only on a terminal -----


def _proxy(cfg, **kw) -> FaultProxy:
    return FaultProxy(urlsplit(cfg.endpoint).port, **kw)


def test_a_stream_broken_mid_download_is_retried_and_verified(one_release, tmp_path):
    cfg, tree = one_release
    proxy = _proxy(cfg, cut_after=100_000, cuts=1)  # the 300 kB model's body dies at 100 kB, once
    try:
        remote = pull.remote_from_config(dataclasses.replace(cfg, endpoint=proxy.endpoint))
        pull.pull(remote, "1.0.0", "base", tmp_path / "dest", progress=False)
    finally:
        proxy.close()
    assert proxy.cut_count == 1
    assert sum(1 for m, p, _ in proxy.requests() if m == "GET" and p.endswith(MODEL)) >= 2
    assert _snapshot(tmp_path / "dest") == _snapshot(tree / "whisper_base_xeon")


def test_large_objects_come_as_ranged_gets(one_release, tmp_path):
    cfg, tree = one_release
    proxy = _proxy(cfg)
    settings = pull.DownloadSettings(multipart_threshold=128 * 1024, multipart_chunksize=64 * 1024,
                                     max_concurrency=2)
    try:
        remote = pull.remote_from_config(dataclasses.replace(cfg, endpoint=proxy.endpoint))
        pull.pull(remote, "1.0.0", "base", tmp_path / "dest", progress=False, settings=settings)
    finally:
        proxy.close()
    ranges = [r for m, p, r in proxy.requests() if m == "GET" and p.endswith(MODEL)]
    assert len(ranges) == 5 and all(r and r.startswith("bytes=") for r in ranges)  # 300 kB / 64 KiB
    assert _snapshot(tmp_path / "dest") == _snapshot(tree / "whisper_base_xeon")


def test_a_store_that_keeps_breaking_streams_gives_one_sentence(one_release, tmp_path):
    cfg, _ = one_release
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "previous.txt").write_text("an older pull")
    proxy = _proxy(cfg, cut_after=100_000, cuts=-1)
    try:
        bad = _cli(cfg, "pull", "--release", "1.0.0", "--model", "base", "--dest", str(dest), "--force",
                   "--no-progress", endpoint=proxy.endpoint)
    finally:
        proxy.close()
    assert bad.returncode == FetchError.exit_code, bad.stderr
    assert f"whisper_base_xeon/{MODEL} failed" in bad.stderr and "rerun the pull" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("error:") == 1
    assert _snapshot(dest) == {"previous.txt": b"an older pull"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_no_progress_bar_in_a_log(one_release, tmp_path):
    cfg, _ = one_release
    ok = _cli(cfg, "pull", "--release", "1.0.0", "--model", "base", "--dest", str(tmp_path / "d"))
    assert ok.returncode == 0, ok.stderr
    assert "\r" not in ok.stderr and "B/s" not in ok.stderr
    assert f"{MODEL} (0.3 MB) downloaded" in ok.stderr  # one line per file instead


def test_progress_bar_on_a_terminal(one_release, tmp_path):
    cfg, _ = one_release
    master, slave = pty.openpty()
    # A real terminal has a size; tqdm draws nothing on a 0-column one (a fresh pty's).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        _cli_argv("pull", "--release", "1.0.0", "--model", "base", "--dest", str(tmp_path / "d")),
        env=_env(cfg), stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0, seen.decode(errors="replace")
    assert b"B/s" in seen or b"%|" in seen, seen.decode(errors="replace")
    assert b"downloaded" not in seen  # the per-file lines are for logs only
