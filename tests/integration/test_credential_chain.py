"""Issue 13 item 16: with no static keys, boto3's default credential chain supplies them, against the
real SeaweedFS server (authentication on): a profile in AWS files of a temp dir, a container-role
endpoint served from loopback, and the shell publisher with AWS_PROFILE."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from consumer_fakes import make_release_tree
from test_publish_support import TEST_SETTINGS, local_files, make_artifacts, running_store, stored_files

from whisper_release.consume.pull import pull, remote_from_config
from whisper_release.core.errors import ConfigError
from whisper_release.core.pins import project_root
from whisper_release.publish.push import make_client, push
from whisper_release.s3.config import load_config
from whisper_release.testing import require_tool

pytestmark = pytest.mark.integration
SCRIPT = project_root() / "minio" / "push_to_minio.sh"
DEFAULTS = {"bucket": "whisper-chain", "prefix": "chain"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("store"), bucket=DEFAULTS["bucket"], prefix="chain") as s:
        cfg = s.config()
        make_client(cfg).create_bucket(Bucket=cfg.bucket)
        yield s


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No credential of the caller's may leak into the chain: every AWS_/MINIO_ variable goes, and the
    AWS files point into the test's own folder (empty until a test writes them)."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_BUCKET", "WHISPER_RELEASE_PREFIX")):
            monkeypatch.delenv(k)
    aws = tmp_path / "aws"
    aws.mkdir()
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe from a test
    return aws


def _profile(aws: Path, name: str, access_key: str, secret_key: str) -> None:
    (aws / "credentials").write_text(
        f"[{name}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
    )
    (aws / "config").write_text(f"[profile {name}]\nregion = us-east-1\n")


def _push_and_pull(tmp_path: Path, version: str) -> None:
    cfg = load_config(defaults=DEFAULTS)
    assert cfg is not None and cfg.uses_chain and cfg.access_key == "" and "credentials: boto3" in cfg.source
    art = make_release_tree(tmp_path / "art", models=("base",))
    report = push(art, cfg, version=version, settings=TEST_SETTINGS)
    assert stored_files(make_client(cfg), cfg, report.release_key) == local_files(art)
    res = pull(remote_from_config(cfg), version, "base", str(tmp_path / "pulled"), progress=False)
    assert sorted(p.name for p in Path(res.dest).iterdir()) == sorted(
        p.name for p in (art / "whisper_base_xeon").iterdir()
    )


def test_a_profile_in_the_aws_files(store, clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    keys = store.config()
    _profile(clean_env, "release-bot", keys.access_key, keys.secret_key)
    monkeypatch.setenv("AWS_PROFILE", "release-bot")
    monkeypatch.setenv("AWS_ENDPOINT_URL", keys.endpoint)
    _push_and_pull(tmp_path, "1.0.0-profile")


def test_a_missing_profile_or_no_credentials_is_one_sentence(store, clean_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.config().endpoint)
    with pytest.raises(ConfigError, match="found none; set the keys or a profile"):
        load_config(defaults=DEFAULTS)
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ConfigError, match="AWS_PROFILE='nope' names no profile"):
        load_config(defaults=DEFAULTS)


@pytest.fixture
def container_endpoint(store) -> Iterator[tuple[str, list[str]]]:
    """What ECS/EKS serve at AWS_CONTAINER_CREDENTIALS_FULL_URI: keys as JSON, asked for with the
    authorization token. Yields (url, the Authorization headers it saw).

    The one difference from a real task role: the session token is empty. SeaweedFS treats any
    X-Amz-Security-Token as a session it issued itself and rejects one it did not (InvalidAccessKeyId),
    while botocore sends the header only for a non-empty token; AWS S3 accepts the real ones."""
    keys = store.config()
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps({
                "AccessKeyId": keys.access_key,
                "SecretAccessKey": keys.secret_key,
                "Token": "",
                "Expiration": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/credentials/task", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_container_role_served_from_loopback(
    store, clean_env: Path, container_endpoint, monkeypatch, tmp_path: Path
) -> None:
    url, seen = container_endpoint
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "task-auth-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.config().endpoint)
    _push_and_pull(tmp_path, "1.0.0-container")
    assert seen and set(seen) == {"task-auth-token"}


def test_the_shell_publisher_uses_aws_profile(store, clean_env: Path, tmp_path: Path) -> None:
    require_tool("bash")
    aws_cli = Path(sys.executable).parent / "aws"
    if not aws_cli.exists():
        require_tool("aws", "the aws cli is in the test extra")
    keys = store.config()
    _profile(clean_env, "release-bot", keys.access_key, keys.secret_key)
    art = make_artifacts(tmp_path / "art", models=("base",), big=200_000)
    env = dict(os.environ, AWS_PROFILE="release-bot", AWS_ENDPOINT_URL=keys.endpoint,
               PATH=f"{aws_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run(
        ["bash", str(SCRIPT), "--client", "aws", "--bucket", keys.bucket, "--prefix", "chain-sh",
         "--version", "1.0.0-sh", str(art)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert keys.secret_key not in p.stdout + p.stderr
    cfg = keys.with_target(prefix="chain-sh")
    assert stored_files(make_client(cfg), cfg, "chain-sh/1.0.0-sh") == local_files(art)
