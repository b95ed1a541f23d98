"""`pull` against the real embedded SeaweedFS store, with a release published by the real publisher.

The release tree here is generated (random bytes with real SHA256SUMS and manifest): pull checks
bytes, not what they mean. The real artifacts are pulled and run in test_consumer_transcribe.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_release.consume import pull
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.publish import push as publish
from whisper_release.s3.store import EmbeddedStore

sys.path.insert(0, str(Path(__file__).parent))
from consumer_fakes import make_release_tree, upload_tree  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_config(tmp_path_factory):
    store = EmbeddedStore(
        tmp_path_factory.mktemp("store"), bucket="consumer-pull-test", prefix="rel/whisper.cpp"
    )
    cfg = store.start()
    try:
        yield cfg
    finally:
        store.stop()


@pytest.fixture(scope="module")
def published(store_config, tmp_path_factory):
    """Two complete releases (r2 published after r1) and one still being published (r3)."""
    trees = {}
    for version in ("1.8.5-r1", "1.8.5-r2"):
        tree = make_release_tree(tmp_path_factory.mktemp(version) / "release_artifacts")
        publish.push(tree, store_config, version=version, create_bucket=True, progress=False)
        trees[version] = tree
    remote = pull.remote_from_config(store_config)
    upload_tree(
        remote.client,
        remote.bucket,
        remote.prefix,
        "1.8.5-r3",
        make_release_tree(tmp_path_factory.mktemp("r3") / "t"),
        manifest=False,
    )
    return remote, trees


def _env(cfg) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_"))}
    env.update(cfg.client_env())
    env["WHISPER_RELEASE_BUCKET"] = cfg.bucket
    env["WHISPER_RELEASE_PREFIX"] = cfg.prefix
    return env


def _cli(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("whisper-release")
    return subprocess.run([str(exe), *args], env=_env(cfg), capture_output=True, text=True, timeout=300)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_pull_places_exactly_the_published_files(published, tmp_path):
    remote, trees = published
    res = pull.pull(remote, "1.8.5-r1", "base", tmp_path / "dest", progress=False)
    assert res.version == "1.8.5-r1" and not res.already_present
    assert _snapshot(tmp_path / "dest") == _snapshot(trees["1.8.5-r1"] / "whisper_base_xeon")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # no temp dir left behind
    again = pull.pull(remote, "1.8.5-r1", "base", tmp_path / "dest", progress=False)
    assert again.already_present


def test_latest_is_the_last_complete_release(published, tmp_path):
    remote, trees = published
    listing = pull.list_releases(remote)
    assert listing.versions() == ["1.8.5-r1", "1.8.5-r2"]
    assert listing.incomplete == ["1.8.5-r3"]
    res = pull.pull(remote, "latest", "tiny.en", tmp_path / "t", progress=False)
    assert res.version == "1.8.5-r2"
    assert _snapshot(tmp_path / "t") == _snapshot(trees["1.8.5-r2"] / "whisper_tiny.en_xeon")


def test_release_without_manifest_is_refused_and_nothing_is_written(published, tmp_path):
    remote, _ = published
    with pytest.raises(VerificationError, match="still being published"):
        pull.pull(remote, "1.8.5-r3", "base", tmp_path / "dest", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_release_and_model_list_what_exists(published, tmp_path):
    remote, _ = published
    with pytest.raises(ConfigError, match=r"available releases are 1\.8\.5-r1, 1\.8\.5-r2"):
        pull.pull(remote, "0.0.1", "base", tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="available models are base, tiny.en"):
        pull.pull(remote, "1.8.5-r1", "large", tmp_path / "d", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_lists_and_refuses_unknown_names_with_exit_code(published, store_config, tmp_path):
    listed = _cli(store_config, "pull", "--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("1.8.5-r1\t") and lines[0].endswith("base tiny.en")
    assert lines[2].startswith("1.8.5-r3\t(incomplete")
    bad = _cli(store_config, "pull", "--release", "9.9", "--model", "base", "--dest", str(tmp_path / "d"))
    assert bad.returncode == ConfigError.exit_code
    assert "available releases are 1.8.5-r1, 1.8.5-r2" in bad.stderr
    assert bad.stderr.count("\n") == 1  # one sentence, no traceback
    bad = _cli(
        store_config, "pull", "--release", "latest", "--model", "medium", "--dest", str(tmp_path / "d")
    )
    assert bad.returncode == ConfigError.exit_code and "available models are base, tiny.en" in bad.stderr
    ok = _cli(store_config, "pull", "--model", "base", "--dest", str(tmp_path / "d"), "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "d")


def _put(remote, key: str, data: bytes) -> None:
    # A careful attacker also rewrites the sha256 metadata: only SHA256SUMS and the manifest can catch it.
    remote.client.put_object(
        Bucket=remote.bucket, Key=key, Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()}
    )


@pytest.fixture
def tamperable(store_config, tmp_path_factory):
    """A fresh release just for tampering, so other tests keep their clean ones."""
    version = f"tamper-{os.urandom(4).hex()}"
    tree = make_release_tree(tmp_path_factory.mktemp("tamper") / "release_artifacts", models=("base",))
    publish.push(tree, store_config, version=version, progress=False)
    remote = pull.remote_from_config(store_config)
    return remote, version, tree


def _existing_dest(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "previous.txt").write_text("an older pull that must survive a failed one")
    return dest, _snapshot(dest)


def test_tampered_object_fails_and_leaves_dest_untouched(tamperable, tmp_path):
    remote, version, _ = tamperable
    _put(remote, remote.key(version, "whisper_base_xeon", "ggml-base-q5_1.bin"), os.urandom(1000))
    dest, before = _existing_dest(tmp_path)
    with pytest.raises(VerificationError, match="ggml-base-q5_1.bin has sha256 .* expected"):
        pull.pull(remote, version, "base", dest, force=True, progress=False)
    assert _snapshot(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_tampered_file_with_matching_sha256sums_is_caught_by_the_manifest(tamperable, tmp_path):
    remote, version, tree = tamperable
    d = tree / "whisper_base_xeon"
    evil = os.urandom(2000)
    sums = (
        (d / "SHA256SUMS")
        .read_text()
        .replace(
            hashlib.sha256((d / "libwhisper.so").read_bytes()).hexdigest(), hashlib.sha256(evil).hexdigest()
        )
    )
    _put(remote, remote.key(version, "whisper_base_xeon", "libwhisper.so"), evil)
    _put(remote, remote.key(version, "whisper_base_xeon", "SHA256SUMS"), sums.encode())
    with pytest.raises(VerificationError, match="libwhisper.so: the manifest says sha256"):
        pull.pull(remote, version, "base", tmp_path / "dest", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unlisted_extra_object_is_refused(tamperable, tmp_path):
    remote, version, _ = tamperable
    _put(remote, remote.key(version, "whisper_base_xeon", "libevil.so"), b"\x7fELF")
    with pytest.raises(VerificationError, match="libevil.so is in the bucket but not in SHA256SUMS"):
        pull.pull(remote, version, "base", tmp_path / "dest", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_object_metadata_mismatch_is_refused(tamperable, tmp_path):
    remote, version, tree = tamperable
    key = remote.key(version, "whisper_base_xeon", "README.md")
    data = (tree / "whisper_base_xeon" / "README.md").read_bytes()
    remote.client.put_object(Bucket=remote.bucket, Key=key, Body=data, Metadata={"sha256": "0" * 64})
    with pytest.raises(VerificationError, match="README.md's object metadata says sha256"):
        pull.pull(remote, version, "base", tmp_path / "dest", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_other_dest_needs_force(tamperable, tmp_path):
    remote, version, tree = tamperable
    dest, before = _existing_dest(tmp_path)
    with pytest.raises(ConfigError, match="--force"):
        pull.pull(remote, version, "base", dest, progress=False)
    assert _snapshot(dest) == before
    pull.pull(remote, version, "base", dest, force=True, progress=False)
    assert _snapshot(dest) == _snapshot(tree / "whisper_base_xeon")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_dry_run_checks_the_release_and_writes_nothing(published, store_config, tmp_path):
    remote, _ = published
    res = pull.pull(remote, "1.8.5-r2", "base", tmp_path / "d", dry_run=True, progress=False)
    assert res.version == "1.8.5-r2" and "ggml-base-q5_1.bin" in res.files
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("invoke")),
            "pull",
            "--release",
            "1.8.5-r2",
            "--model",
            "base",
            "--dest",
            str(tmp_path / "d"),
            "--dry-run",
        ],
        cwd=Path(__file__).parents[2],
        env=_env(store_config),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dry run: would pull" in proc.stderr
    assert list(tmp_path.iterdir()) == []
