"""minio/push_to_minio.sh run for real against SeaweedFS (auth on): aws cli and MinIO's client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from test_publish_support import (
    local_files,
    make_artifacts,
    running_store,
    stored_files,
    write_manifest,
    write_sums,
)

from whisper_release.consume import pull
from whisper_release.core.errors import PublishError
from whisper_release.core.pins import project_root
from whisper_release.publish import pointer
from whisper_release.publish.push import push
from whisper_release.s3.client import make_client
from whisper_release.testing import require_tool

pytestmark = pytest.mark.integration
ROOT = project_root()
SCRIPT = ROOT / "minio" / "push_to_minio.sh"
INSTALLER = ROOT / "minio" / "install-minio-client.sh"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("store"), bucket="whisper-sh", prefix="sh") as s:
        cfg = s.config()
        make_client(cfg).create_bucket(Bucket=cfg.bucket)
        yield s


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    # One model and small files: every aws cli call costs about a second here. The model (9 MiB)
    # passes the aws cli's 8 MiB multipart threshold, so one stored ETag is a multipart one.
    return make_artifacts(tmp_path_factory.mktemp("art") / "release", models=("base",), big=9 * 1024 * 1024)


def tiny_release(root: Path, text: str) -> Path:
    """A release of three objects (README.md, SHA256SUMS, manifest.json): the fewest aws cli calls
    for tests whose point is not the number of files."""
    d = root / "whisper_base_xeon"
    d.mkdir(parents=True)
    (d / "README.md").write_text(f"# whisper base for Xeon\n{text}\n")
    write_sums(d)
    write_manifest(root, {"models": ["base"], "text": text})
    return root


def aws_shim(where: Path, *, swap: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A dir with an `aws` that logs each call ("<command> <operation>") and runs the real aws cli.

    With `swap=(src, other)` an upload of `src` sends `other` instead: a transfer that stores the
    wrong bytes, for the script's after-upload check to catch.
    """
    real = require_tool("aws", "the aws cli is in the test extra")
    log = where / "aws-calls.log"
    shim = where / "aws"
    where.mkdir(parents=True, exist_ok=True)
    swap_src, swap_dst = (str(swap[0]), str(swap[1])) if swap else ("", "")
    shim.write_text(f"""#!/usr/bin/env bash
if [[ "$1" == --endpoint-url ]]; then echo "$3 $4"; else echo "$*"; fi >> '{log}'
args=()
for a in "$@"; do [[ -n '{swap_src}' && "$a" == '{swap_src}' ]] && a='{swap_dst}'; args+=("$a"); done
exec '{real}' "${{args[@]}}"
""")
    shim.chmod(0o755)
    return where, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


SYSTEM_PATH = ("/usr/bin", "/bin")  # coreutils, awk, and Debian's /usr/bin/mc (Midnight Commander)


def _path_with(*dirs: Path, aws: bool = True) -> str:
    """PATH with the given dirs first, then python's bin (aws) unless hidden, then the system dirs."""
    aws_dir = [str(Path(require_tool("aws", "the aws cli is in the test extra")).parent)] if aws else []
    return os.pathsep.join([*map(str, dirs), *aws_dir, *SYSTEM_PATH])


def run(args, cfg, *, path: str, env_extra=None, timeout=240):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "MC_HOST"))}
    env.update(cfg.client_env())
    env.update({"PATH": path, "WHISPER_RELEASE_BUCKET": cfg.bucket, "WHISPER_RELEASE_PREFIX": cfg.prefix})
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_documents_exit_codes():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for code in range(11):
        assert f"  {code} " in out
    assert "commit-id=" in out and "Midnight Commander" in out


def test_aws_cli_push_then_sha256_of_every_object_matches(store, artifacts, tmp_path):
    cfg = store.config()
    shim, log = aws_shim(tmp_path / "shim")
    make_client(cfg).delete_object(Bucket=cfg.bucket, Key="sh/latest.json")  # whatever ran before
    p = run(["--version", "aws-1", artifacts], cfg, path=_path_with(shim))
    assert p.returncode == 0, p.stderr
    assert f"client: aws ({shim / 'aws'})" in p.stderr
    # One aws cli start per object plus two listings: the checks before any upload, and the sizes
    # and MD5s of everything stored before the manifest goes up. Then latest.json: read (none
    # here), written, read back.
    n_objects = len(local_files(artifacts))
    listing, upload, get = "s3api list-objects-v2", "s3 cp", "s3api get-object"
    assert calls(log) == [listing] + [upload] * (n_objects - 1) + [listing, upload] + [get, upload, get]
    lines = [line for line in p.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 9 and lines[-1].startswith("[9/9] uploaded sh/aws-1/manifest.json")
    assert "SHA256SUMS" in lines[-2]
    client = make_client(cfg)
    assert stored_files(client, cfg, "sh/aws-1") == local_files(artifacts)
    for rel, sha in local_files(artifacts).items():
        assert client.head_object(Bucket=cfg.bucket, Key=f"sh/aws-1/{rel}")["Metadata"]["sha256"] == sha
    listed = client.list_objects_v2(Bucket=cfg.bucket, Prefix="sh/aws-1/")["Contents"]
    etags = {o["Key"]: o["ETag"] for o in listed}
    assert etags["sh/aws-1/whisper_base_xeon/ggml-base-q5_1.bin"].strip('"').endswith("-2")
    assert cfg.secret_key not in p.stdout + p.stderr
    # A rerun lists the release, finds the same manifest and uploads nothing.
    log.unlink()
    again = run(["--version", "aws-1", artifacts], cfg, path=_path_with(shim))
    assert again.returncode == 0 and "nothing to upload" in again.stderr and "uploaded" not in again.stdout
    assert calls(log) == ["s3api list-objects-v2", "s3 cp", "s3api get-object"]


def test_aws_cli_upload_storing_wrong_bytes_is_caught_before_the_manifest(store, tmp_path):
    cfg = store.config()
    release = tiny_release(tmp_path / "release", "wrong bytes")
    readme = release / "whisper_base_xeon" / "README.md"
    other = tmp_path / "README.md"
    other.write_bytes(readme.read_bytes().swapcase())  # same size, other bytes
    assert other.read_bytes() != readme.read_bytes()
    shim, log = aws_shim(tmp_path / "shim", swap=(readme, other))
    p = run(["--version", "aws-bad", release], cfg, path=_path_with(shim))
    assert p.returncode == 8, p.stderr
    assert "s3://whisper-sh/sh/aws-bad/whisper_base_xeon/README.md reads back with sha256" in p.stderr
    assert "release not published" in p.stderr
    stored = stored_files(make_client(cfg), cfg, "sh/aws-bad")
    assert "manifest.json" not in stored
    assert stored["whisper_base_xeon/README.md"] != local_files(release)["whisper_base_xeon/README.md"]


def test_real_midnight_commander_is_refused_then_aws_or_a_clear_failure(store, artifacts, tmp_path):
    real = Path(require_tool("mc", "Debian's mc package, from scripts/install-system-deps.sh"))
    banner = subprocess.run(
        [str(real), "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
    ).stdout
    assert "GNU Midnight Commander" in banner, f"{real} is not Midnight Commander: {banner[:200]!r}"
    link = tmp_path / "bin" / "mc"
    link.parent.mkdir()
    link.symlink_to(real)
    cfg = store.config()
    refused = f"refusing {link}: it is GNU Midnight Commander, not MinIO's client"
    p = run(["--client", "mc", artifacts], cfg, path=_path_with(link.parent))
    assert p.returncode == 3, p.stderr
    assert refused in p.stderr and "no usable client" in p.stderr
    # Auto mode falls back to the aws cli (here stopped early by a missing bucket: exit 7).
    p = run(["--bucket", "no-such-bucket", artifacts], cfg, path=_path_with(link.parent))
    assert p.returncode == 7, p.stderr
    assert refused in p.stderr and "client: aws" in p.stderr
    # With the aws cli hidden too, nothing is left: a clear failure before any upload.
    p = run(["--version", "none-1", artifacts], cfg, path=_path_with(link.parent, aws=False))
    assert p.returncode == 3, p.stderr
    assert refused in p.stderr and "no usable client" in p.stderr and "push_to_minio: client:" not in p.stderr
    assert make_client(cfg).list_objects_v2(Bucket=cfg.bucket, Prefix="sh/none-1/").get("KeyCount") == 0


def test_other_programs_named_like_the_minio_client_are_refused(store, artifacts, tmp_path):
    # A stand-in for any non-MinIO program called mcli (no such program is packaged here).
    fake = tmp_path / "bin" / "mcli"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'mcli 2.1 (some other tool)'\n")
    fake.chmod(0o755)
    p = run(["--client", "mc", artifacts], store.config(), path=_path_with(fake.parent))
    assert p.returncode == 3, p.stderr
    assert f"refusing {fake}: its --version shows no MinIO commit-id" in p.stderr
    # Likewise a program called aws that is not the aws cli: found out when its first call fails.
    fake_aws = fake.parent / "aws"
    fake_aws.write_text("#!/bin/sh\necho 'aws: amazing web server 0.1' >&2\nexit 1\n")
    fake_aws.chmod(0o755)
    p = run([artifacts], store.config(), path=_path_with(fake.parent, aws=False))
    assert p.returncode == 3, p.stderr
    assert f"{fake_aws} is not the aws cli" in p.stderr


def test_explicit_mc_is_used_alone_or_refused(store, artifacts, tmp_path):
    cfg = store.config()
    real_mc = require_tool("mc", "Debian's mc package, from scripts/install-system-deps.sh")
    # Given explicitly, Midnight Commander is refused with no fallback to the aws cli on PATH.
    for args, env in ((["--mc", real_mc], {}), ([], {"MC_BIN": real_mc})):
        p = run([*args, artifacts], cfg, path=_path_with(), env_extra=env)
        assert p.returncode == 3, p.stderr
        assert f"{real_mc} (from --mc or MC_BIN) is not MinIO's client" in p.stderr
        assert "push_to_minio: client:" not in p.stderr
    p = run(["--mc", tmp_path / "nowhere" / "mc", artifacts], cfg, path=_path_with())
    assert p.returncode == 2 and "is not an executable file" in p.stderr
    p = run(["--mc", real_mc, "--client", "aws", artifacts], cfg, path=_path_with())
    assert p.returncode == 2 and "contradict" in p.stderr
    # An exported MC_BIN does not stop an explicit --client aws (stopped here by a missing bucket).
    p = run(
        ["--client", "aws", "--bucket", "no-such-bucket", artifacts],
        cfg,
        path=_path_with(),
        env_extra={"MC_BIN": real_mc},
    )
    assert p.returncode == 7 and "client: aws" in p.stderr, p.stderr


def test_explicit_mc_outside_path_is_accepted_and_gets_credentials_by_environment(store, artifacts, tmp_path):
    # MinIO's client cannot be installed here (see test_real_minio_client_push_then_sha256_matches);
    # this stand-in reports a MinIO commit-id and records how it is called, then fails the first
    # bucket listing the way mc does for a missing bucket.
    record = tmp_path / "calls"
    fake = tmp_path / "opt" / "minio-client-custom"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
if [ "$1" = --version ]; then echo 'mc version RELEASE.2025-01-01T00-00-00Z (commit-id=0123abc)'; exit 0; fi
printf '%s\\n' "ARGV $*" "MC_HOST_wrpush=$MC_HOST_wrpush" >> {record}
echo 'mc: <ERROR> Unable to list folder. Bucket `no-such-bucket` does not exist.' >&2
exit 1
""")
    fake.chmod(0o755)
    cfg = store.config()
    p = run(
        ["--bucket", "no-such-bucket", artifacts], cfg, path=_path_with(), env_extra={"MC_BIN": str(fake)}
    )
    assert p.returncode == 7, p.stderr
    assert f"client: mc ({fake})" in p.stderr
    argv, host = record.read_text().splitlines()
    assert argv.startswith("ARGV --config-dir ") and argv.endswith(" ls wrpush/no-such-bucket/")
    assert cfg.secret_key not in argv
    user, secret = (quote(k, safe="-._~") for k in (cfg.access_key, cfg.secret_key))
    assert host == f"MC_HOST_wrpush=http://{user}:{secret}@{cfg.endpoint.split('://')[1]}"
    assert cfg.secret_key not in p.stdout + p.stderr


def test_wrong_credentials_exit_6_and_nothing_uploaded(store, artifacts):
    cfg = store.config()
    p = run(
        ["--version", "bad-1", artifacts],
        cfg,
        path=_path_with(),
        env_extra={"AWS_SECRET_ACCESS_KEY": "wrong-secret-123"},
    )
    assert p.returncode == 6, p.stderr
    assert "rejected the credentials" in p.stderr and "wrong-secret-123" not in p.stderr + p.stdout
    assert make_client(cfg).list_objects_v2(Bucket=cfg.bucket, Prefix="sh/bad-1/").get("KeyCount") == 0


def test_unreachable_bad_endpoint_and_bad_artifacts_have_distinct_codes(store, artifacts, tmp_path):
    cfg = store.config()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run(["--endpoint", f"http://127.0.0.1:{port}", artifacts], cfg, path=_path_with())
    assert p.returncode == 5 and "cannot connect" in p.stderr
    p = run(["--endpoint", "http://user:pw@127.0.0.1:9000/x", artifacts], cfg, path=_path_with())
    assert p.returncode == 2 and "not http(s)://host[:port]" in p.stderr
    broken = make_artifacts(tmp_path / "broken", models=("base",), big=1000)
    (broken / "whisper_base_xeon" / "libwhisper.so").write_bytes(b"tampered")
    p = run([broken], cfg, path=_path_with())
    assert p.returncode == 4 and "SHA256SUMS does not match" in p.stderr


def test_manifest_disagreeing_with_sha256sums_is_refused_before_any_upload(store, tmp_path):
    cfg = store.config()
    release = tiny_release(tmp_path / "release", "x")
    good = (release / "manifest.json").read_text()
    doc = json.loads(good)
    readme = next(s for s in doc["subject"] if s["name"] == "whisper_base_xeon/README.md")
    readme["digest"]["sha256"] = "0" * 64
    doc["subject"].append({"name": "whisper_base_xeon/gone.so", "digest": {"sha256": "1" * 64}})
    (release / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    p = run(["--version", "mx-1", release], cfg, path=_path_with())
    assert p.returncode == 4, p.stderr
    assert f"{release}/manifest.json and the SHA256SUMS files beside it disagree (2 finding(s): " in p.stderr
    assert ("manifest.json gives whisper_base_xeon/README.md sha256 000000000000…, the tree's "
            "SHA256SUMS") in p.stderr
    assert "manifest.json lists whisper_base_xeon/gone.so, which is not in the tree" in p.stderr
    (release / "manifest.json").write_text(json.dumps({"models": ["base"]}))
    p = run(["--version", "mx-1", release], cfg, path=_path_with())
    assert p.returncode == 4 and "has no 'subject' list" in p.stderr, p.stderr
    assert make_client(cfg).list_objects_v2(Bucket=cfg.bucket, Prefix="sh/mx-1/").get("KeyCount") == 0
    (release / "manifest.json").write_text(good)
    p = run(["--version", "mx-1", "--dry-run", release], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr


def test_changed_release_needs_force(store, tmp_path):
    cfg = store.config()
    first = tiny_release(tmp_path / "a", "first")
    second = tiny_release(tmp_path / "b", "second")
    # The existing release comes from the Python publisher (same layout): it saves a slow aws run.
    push(first, cfg, version="f-1", progress=False)
    p = run(["--version", "f-1", second], cfg, path=_path_with())
    assert p.returncode == 9 and "--force" in p.stderr
    assert stored_files(make_client(cfg), cfg, "sh/f-1") == local_files(first)
    p = run(["--version", "f-1", "--force", second], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert stored_files(make_client(cfg), cfg, "sh/f-1") == local_files(second)


def release_with_stale_file(root: Path, text: str) -> Path:
    """tiny_release plus a file a later build no longer makes."""
    tiny_release(root, text)
    (root / "whisper_base_xeon" / "stale.bin").write_bytes(os.urandom(100))
    write_sums(root / "whisper_base_xeon")
    write_manifest(root, {"models": ["base"], "text": text})
    return root


def fake_mc(where: Path, bucket: str) -> tuple[Path, Path]:
    """tests/integration/fake_mc.py behind an executable, and the directory that plays its store."""
    root = where / "fake-store"
    (root / bucket).mkdir(parents=True)
    exe = where / "fake-bin" / "mc-stand-in"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).with_name("fake_mc.py")} "$@"\n')
    exe.chmod(0o755)
    return exe, root


def test_mc_failed_manifest_read_is_an_error_not_a_missing_release(store, tmp_path):
    # MinIO's client cannot be installed here (FACTS.md): a stand-in (fake_mc.py) plays it over a
    # directory and fails the manifest download the way a store in trouble does (HTTP 503).
    cfg = store.config()
    mc, root = fake_mc(tmp_path, cfg.bucket)
    published = tiny_release(tmp_path / "published", "published")
    shutil.copytree(published, root / cfg.bucket / "sh" / "mcf-1")
    new = tiny_release(tmp_path / "new", "new")
    env = {"FAKE_MC_ROOT": str(root), "FAKE_MC_FAIL_READ": "manifest.json"}
    p = run(["--mc", mc, "--version", "mcf-1", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 5, p.stderr
    assert ("s3://whisper-sh/sh/mcf-1/manifest.json is listed but could not be downloaded (mc: <ERROR> "
            "Unable to download") in p.stderr and "nothing was uploaded" in p.stderr
    assert local_files(root / cfg.bucket / "sh" / "mcf-1") == local_files(published)
    calls_made = Path(f"{root}.calls").read_text().splitlines()
    assert not [c for c in calls_made if c.startswith(("cp --attr", "rm"))]
    # An object that is not there is a different answer: no release yet, so this one is published.
    p = run(["--mc", mc, "--version", "mcf-2", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 0, p.stderr
    assert local_files(root / cfg.bucket / "sh" / "mcf-2") == local_files(new)


def test_mc_force_deletes_objects_the_new_tree_no_longer_has(store, tmp_path):
    # The mc branch through the stand-in (see the test above): MinIO's client is not installable.
    cfg = store.config()
    mc, root = fake_mc(tmp_path, cfg.bucket)
    stored = root / cfg.bucket / "sh" / "mcs-1"
    shutil.copytree(release_with_stale_file(tmp_path / "old", "old"), stored)
    new = tiny_release(tmp_path / "new", "new")
    env = {"FAKE_MC_ROOT": str(root)}
    p = run(["--mc", mc, "--version", "mcs-1", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 9, p.stderr
    p = run(["--mc", mc, "--version", "mcs-1", "--force", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 0, p.stderr
    assert local_files(stored) == local_files(new)
    assert "rm wrpush/whisper-sh/sh/mcs-1/whisper_base_xeon/stale.bin" in Path(f"{root}.calls").read_text()
    # The same manifest with an object beside it that it does not list is not "already published".
    (stored / "whisper_base_xeon" / "planted.bin").write_bytes(b"x")
    p = run(["--mc", mc, "--version", "mcs-1", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 9 and "has this manifest but also 1 object(s)" in p.stderr, p.stderr
    p = run(["--mc", mc, "--version", "mcs-1", "--force", new], cfg, path=_path_with(), env_extra=env)
    assert p.returncode == 0 and local_files(stored) == local_files(new), p.stderr


def test_aws_force_deletes_objects_the_new_tree_no_longer_has(store, tmp_path):
    cfg = store.config()
    client = make_client(cfg)
    new = tiny_release(tmp_path / "new", "new")
    # The old release comes from the Python publisher (same layout): it saves slow aws cli starts.
    push(release_with_stale_file(tmp_path / "old", "old"), cfg, version="fs-1", progress=False)
    p = run(["--version", "fs-1", "--force", new], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert "deleting 1 object(s)" in p.stderr
    assert stored_files(client, cfg, "sh/fs-1") == local_files(new)
    client.put_object(Bucket=cfg.bucket, Key="sh/fs-1/whisper_base_xeon/planted.bin", Body=b"x")
    p = run(["--version", "fs-1", new], cfg, path=_path_with())
    assert p.returncode == 9 and "has this manifest but also 1 object(s)" in p.stderr, p.stderr
    p = run(["--version", "fs-1", "--force", new], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert stored_files(client, cfg, "sh/fs-1") == local_files(new)


# install-minio-client.sh's exit code for "the suite's freshly fetched index has no minio-client".
NO_SUCH_PACKAGE = 5


@pytest.fixture(scope="module")
def minio_client():
    """MinIO's real client from Debian, or an expected failure naming the index that lacks it.

    Only the installer's definitive answer (exit 5) becomes an xfail; a network or mirror failure,
    or a broken package, fails the test.
    """
    require_tool("apt-get", "the installer fetches Debian's minio-client package")
    p = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=300)
    last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    last = last.removeprefix("install-minio-client: error: ")
    if p.returncode == NO_SUCH_PACKAGE:
        pytest.xfail(f"MinIO's real client cannot be installed, so this push was not run: {last}")
    if p.returncode != 0:
        pytest.fail(f"minio/install-minio-client.sh failed (exit {p.returncode}): {last}")
    return Path(p.stdout.strip().splitlines()[-1])


def test_real_minio_client_push_then_sha256_matches(minio_client, store, artifacts):
    cfg = store.config()
    out = subprocess.run([str(minio_client), "--version"], capture_output=True, text=True).stdout
    assert "commit-id=" in out
    p = run(["--mc", minio_client, "--version", "mc-1", artifacts], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert f"client: mc ({minio_client})" in p.stderr
    client = make_client(cfg)
    assert stored_files(client, cfg, "sh/mc-1") == local_files(artifacts)
    assert cfg.secret_key not in p.stdout + p.stderr


# ---- latest.json (issue 13 item 4): the pointer `pull --release latest` follows ----------------
# The rules are pointer.py's; tests/unit/publish/test_pointer.py checks the version order and the pointer
# bytes of both publishers against one table. Here: the script against the real store, each prefix
# its own so the pointers of the tests above do not interfere.

LISTING, UPLOAD, GET = "s3api list-objects-v2", "s3 cp", "s3api get-object"


def stored_pointer(client, cfg, prefix: str) -> bytes | None:
    try:
        return client.get_object(Bucket=cfg.bucket, Key=f"{prefix}/latest.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def pointer_for(version: str, tree: Path) -> bytes:
    return pointer.pointer_bytes(version, hashlib.sha256((tree / "manifest.json").read_bytes()).hexdigest())


def test_aws_release_pushed_by_the_script_is_pulled_as_latest(store, tmp_path):
    cfg = store.config()
    client = make_client(cfg)
    tree = make_artifacts(tmp_path / "release", models=("base",), big=1000)
    shim, log = aws_shim(tmp_path / "shim")
    p = run(["--prefix", "ptr-pull", "--version", "2.0.0", tree], cfg, path=_path_with(shim))
    assert p.returncode == 0, p.stderr
    want = pointer_for("2.0.0", tree)
    assert stored_pointer(client, cfg, "ptr-pull") == want
    head = client.head_object(Bucket=cfg.bucket, Key="ptr-pull/latest.json")
    assert head["ContentType"] == "application/json"
    assert head["Metadata"]["sha256"] == hashlib.sha256(want).hexdigest()
    # After the manifest: the current pointer read (none yet), the new one written and read back.
    n = len(local_files(tree))
    assert calls(log) == [LISTING] + [UPLOAD] * (n - 1) + [LISTING, UPLOAD] + [GET, UPLOAD, GET]
    assert "push_to_minio: s3://whisper-sh/ptr-pull/latest.json -> 2.0.0\n" in p.stderr
    # The consumer finds it as `latest`, with no version given.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_"))}
    env.update(cfg.client_env(), WHISPER_RELEASE_BUCKET=cfg.bucket, WHISPER_RELEASE_PREFIX="ptr-pull")
    dest = tmp_path / "dest"
    pulled = subprocess.run(
        [str(Path(sys.executable).with_name("whisper-release")), "pull", "--release", "latest", "--model",
         "base", "--dest", str(dest), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert local_files(dest) == local_files(tree / "whisper_base_xeon")
    # A rerun uploads nothing and finds the pointer already right: listing, manifest, pointer.
    log.unlink()
    again = run(["--prefix", "ptr-pull", "--version", "2.0.0", tree], cfg, path=_path_with(shim))
    assert again.returncode == 0 and "latest.json already names 2.0.0" in again.stderr, again.stderr
    assert calls(log) == [LISTING, UPLOAD, GET]


def test_either_publisher_moves_the_pointer_the_other_wrote_only_forward(store, tmp_path):
    cfg = store.config()
    client = make_client(cfg)
    py_cfg = cfg.with_target(prefix="ptr-both")
    trees = {v: tiny_release(tmp_path / v, v) for v in ("1.8.5-r9", "1.8.5-r10", "1.8.5-r11")}
    script = ["--prefix", "ptr-both"]
    push(trees["1.8.5-r10"], py_cfg, version="1.8.5-r10", progress=False)
    by_python = stored_pointer(client, cfg, "ptr-both")
    assert by_python == pointer_for("1.8.5-r10", trees["1.8.5-r10"])
    # r9 < r10 as numbers (as strings "r9" > "r1..."): published, the pointer stays.
    p = run([*script, "--version", "1.8.5-r9", trees["1.8.5-r9"]], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert ("s3://whisper-sh/ptr-both/latest.json stays at 1.8.5-r10, which is newer than 1.8.5-r9 "
            "(--force-latest moves it back)") in p.stderr
    assert stored_pointer(client, cfg, "ptr-both") == by_python
    assert "manifest.json" in stored_files(client, cfg, "ptr-both/1.8.5-r9")
    # --force-latest moves it back, to exactly the bytes pointer.py would write.
    p = run([*script, "--version", "1.8.5-r9", "--force-latest", trees["1.8.5-r9"]], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert "latest.json -> 1.8.5-r9 (was 1.8.5-r10)" in p.stderr
    assert stored_pointer(client, cfg, "ptr-both") == pointer_for("1.8.5-r9", trees["1.8.5-r9"])
    # The Python publisher moves the script's pointer forward (its rerun uploads nothing else)...
    push(trees["1.8.5-r10"], py_cfg, version="1.8.5-r10", progress=False)
    assert stored_pointer(client, cfg, "ptr-both") == by_python
    # ...and the script moves the Python publisher's pointer forward.
    p = run([*script, "--version", "1.8.5-r11", trees["1.8.5-r11"]], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert stored_pointer(client, cfg, "ptr-both") == pointer_for("1.8.5-r11", trees["1.8.5-r11"])
    remote = pull.remote_from_config(py_cfg)
    assert pull.read_latest(remote) == pull.Latest("1.8.5-r11", hashlib.sha256(
        (trees["1.8.5-r11"] / "manifest.json").read_bytes()).hexdigest())


def test_aws_invalid_pointer_is_replaced_only_with_force_latest(store, tmp_path):
    cfg = store.config()
    client = make_client(cfg)
    tree = tiny_release(tmp_path / "release", "x")
    # Valid JSON naming an older version, but not the bytes a publisher writes: neither publisher
    # guesses what a hand-edited pointer meant.
    edited = json.dumps({"version": "0.1", "manifest_sha256": "0" * 64}).encode()
    client.put_object(Bucket=cfg.bucket, Key="ptr-bad/latest.json", Body=edited)
    p = run(["--prefix", "ptr-bad", "--version", "1.0", tree], cfg, path=_path_with())
    assert p.returncode == 10, p.stderr
    assert ("push_to_minio: error: release 1.0 was published, but s3://whisper-sh/ptr-bad/latest.json is not "
            "a valid pointer, so it was not replaced; pass --force-latest to overwrite it with this release"
            ) in p.stderr
    assert stored_pointer(client, cfg, "ptr-bad") == edited
    assert "manifest.json" in stored_files(client, cfg, "ptr-bad/1.0")
    with pytest.raises(PublishError, match="is not a valid pointer"):
        push(tree, cfg.with_target(prefix="ptr-bad"), version="1.0", progress=False)
    p = run(["--prefix", "ptr-bad", "--version", "1.0", "--force-latest", tree], cfg, path=_path_with())
    assert p.returncode == 0, p.stderr
    assert stored_pointer(client, cfg, "ptr-bad") == pointer_for("1.0", tree)


def test_aws_pointer_that_cannot_be_read_or_written_is_an_error(store, tmp_path):
    # Real refusals: SeaweedFS enforces these bucket policies on latest.json alone.
    cfg = store.config().with_target(bucket="whisper-sh-deny", prefix="ptr")
    client = make_client(cfg)
    client.create_bucket(Bucket=cfg.bucket)
    newer = pointer.pointer_bytes("9.0", "1" * 64)
    client.put_object(Bucket=cfg.bucket, Key="ptr/latest.json", Body=newer)

    def deny(action: str) -> None:
        client.put_bucket_policy(Bucket=cfg.bucket, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Principal": "*", "Action": action,
                           "Resource": f"arn:aws:s3:::{cfg.bucket}/ptr/latest.json"}],
        }))

    tree = tiny_release(tmp_path / "release", "x")
    deny("s3:GetObject")
    # Were a failed read "no pointer yet", this older release would replace the pointer to 9.0.
    p = run(["--version", "1.0", tree], cfg, path=_path_with())
    assert p.returncode == 10, p.stderr
    assert ("push_to_minio: error: release 1.0 was published, but reading "
            "s3://whisper-sh-deny/ptr/latest.json failed (") in p.stderr and "AccessDenied" in p.stderr
    assert "the latest-release pointer was left unchanged: rerun the push" in p.stderr
    client.delete_bucket_policy(Bucket=cfg.bucket)
    assert stored_pointer(client, cfg, "ptr") == newer
    assert "manifest.json" in stored_files(client, cfg, "ptr/1.0")
    # The write refused: the release stays published, the pointer names the previous one.
    client.put_object(Bucket=cfg.bucket, Key="ptr/latest.json", Body=pointer.pointer_bytes("0.9", "2" * 64))
    deny("s3:PutObject")
    p = run(["--version", "1.0", tree], cfg, path=_path_with())
    assert p.returncode == 10, p.stderr
    assert ("push_to_minio: error: release 1.0 was published, but writing "
            "s3://whisper-sh-deny/ptr/latest.json failed (") in p.stderr
    assert "`pull --release latest` still gets the previous one" in p.stderr
    client.delete_bucket_policy(Bucket=cfg.bucket)
    assert stored_pointer(client, cfg, "ptr") == pointer.pointer_bytes("0.9", "2" * 64)
    # Once the store allows it, a rerun completes the pointer (and uploads nothing else).
    p = run(["--version", "1.0", tree], cfg, path=_path_with())
    assert p.returncode == 0 and "nothing to upload" in p.stderr, p.stderr
    assert stored_pointer(client, cfg, "ptr") == pointer_for("1.0", tree)


def test_mc_pointer_written_last_read_back_moved_only_forward(store, tmp_path):
    # The mc branch through the stand-in fake_mc.py (MinIO's client is not installable, FACTS.md);
    # it also stages what the real store cannot: a read that fails with 503, a write that stores
    # other bytes.
    cfg = store.config()
    mc, root = fake_mc(tmp_path, cfg.bucket)
    calls_file = Path(f"{root}.calls")
    stored = root / cfg.bucket / "sh" / "latest.json"
    trees = {v: tiny_release(tmp_path / v, v) for v in ("2.0", "10.0", "3.0")}
    env = {"FAKE_MC_ROOT": str(root)}

    def push_mc(version: str, *extra: str, **more: str):
        return run(["--mc", mc, "--version", version, *extra, trees[version]], cfg, path=_path_with(),
                   env_extra={**env, **more})

    p = push_mc("2.0")
    assert p.returncode == 0, p.stderr
    assert stored.read_bytes() == pointer_for("2.0", trees["2.0"])
    # Each call as logged (local paths left out), without the options every call carries.
    made = [c.replace("--config-dir --no-color --quiet ", "") for c in calls_file.read_text().splitlines()]
    manifest_sha = hashlib.sha256((trees["2.0"] / "manifest.json").read_bytes()).hexdigest()
    manifest_up = made.index(f"cp --attr sha256={manifest_sha} wrpush/whisper-sh/sh/2.0/manifest.json")
    sha = hashlib.sha256(pointer_for("2.0", trees["2.0"])).hexdigest()
    assert made[manifest_up + 1:] == [
        "stat --json wrpush/whisper-sh/sh/2.0/manifest.json",  # the manifest's stored size
        "cp wrpush/whisper-sh/sh/latest.json",  # the current pointer: none yet
        f"cp --attr sha256={sha} wrpush/whisper-sh/sh/latest.json",
        "cp wrpush/whisper-sh/sh/latest.json",  # read back
    ]
    # 10.0 > 2.0 as numbers (not as strings): the pointer moves forward.
    assert push_mc("10.0").returncode == 0
    assert stored.read_bytes() == pointer_for("10.0", trees["10.0"])
    p = push_mc("3.0")
    assert p.returncode == 0 and "latest.json stays at 10.0, which is newer than 3.0" in p.stderr, p.stderr
    assert stored.read_bytes() == pointer_for("10.0", trees["10.0"])
    # A read that fails is an error, never "no pointer yet" (which would move it back to 3.0).
    p = push_mc("3.0", FAKE_MC_FAIL_READ="latest.json")
    assert p.returncode == 10, p.stderr
    assert ("release 3.0 was published, but reading s3://whisper-sh/sh/latest.json failed (mc: <ERROR> "
            "Unable to download") in p.stderr
    assert stored.read_bytes() == pointer_for("10.0", trees["10.0"])
    # --force-latest moves it back; a store that keeps other bytes is caught by the read-back.
    p = push_mc("3.0", "--force-latest", FAKE_MC_CORRUPT_WRITE="latest.json")
    assert p.returncode == 10, p.stderr
    assert ("release 3.0 was published, but reading back s3://whisper-sh/sh/latest.json gave other bytes "
            "than were written; rerun the push") in p.stderr
    # What that store kept is not a pointer: replaced only when asked.
    p = push_mc("3.0")
    assert p.returncode == 10 and "latest.json is not a valid pointer, so it was not replaced" in p.stderr
    p = push_mc("3.0", "--force-latest")
    assert p.returncode == 0 and "s3://whisper-sh/sh/latest.json -> 3.0\n" in p.stderr, p.stderr
    assert stored.read_bytes() == pointer_for("3.0", trees["3.0"])
