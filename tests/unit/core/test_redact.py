"""Issue 13 item 10: a URL's userinfo never reaches a message, a log line or the shell publisher's
output. Real loopback HTTP servers and the real script; no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from test_fetch_support import Server, http_server  # noqa: F401  (fixture)

from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, FetchError, ReleaseError, ToolError
from whisper_release.core.pins import PackageFile, project_root
from whisper_release.core.redact import redact_text, redact_url
from whisper_release.inputs import index
from whisper_release.inputs.download import RetryPolicy, download
from whisper_release.s3.config import load_config

SECRET = "canary-S3cr3t/with+slash"
TOKEN = "canary-pypi-AgEIcHlwaS5vcmc"  # a well-formed URL password (no '/')
PKG = PackageFile("pywhispercpp", "1.5.1", "pywhispercpp-1.5.1.tar.gz", "0" * 64)
SCRIPT = project_root() / "minio" / "push_to_minio.sh"
FAST = RetryPolicy(retries=1, backoff=0.0, timeout=5.0)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("https://__token__:abc@pypi.example/simple", "https://***@pypi.example/simple"),
        ("at http://K:se/cr+et@127.0.0.1:9/x (404)", "at http://***@127.0.0.1:9/x (404)"),
        ("two: http://a@h/ and 'ftp://u:p@h:21/f'", "two: http://***@h/ and 'ftp://***@h:21/f'"),
        ("s3://bucket/pre@fix/1.0/manifest.json", "s3://bucket/pre@fix/1.0/manifest.json"),
        ("no url, an e-mail a@b.c", "no url, an e-mail a@b.c"),
        ("http://host/plain", "http://host/plain"),
    ],
)
def test_redact_text(text: str, want: str) -> None:
    assert redact_text(text) == want


def test_redact_url_with_and_without_scheme() -> None:
    assert redact_url("KEY:SEC/RET@minio.local:9000") == "***@minio.local:9000"
    assert redact_url("http://KEY:SECRET@h:1/x") == "http://***@h:1/x"
    assert redact_url("http://h:1") == "http://h:1"


def test_every_release_error_and_info_line_is_redacted(capsys) -> None:
    e = ToolError(f"Command failed: git clone https://user:{SECRET}@git.example/x.git")
    assert SECRET not in str(e) and "https://***@git.example/x.git" in str(e)
    assert isinstance(e, ReleaseError)
    info(f"+ curl https://__token__:{SECRET}@index.example/simple/")
    assert SECRET not in capsys.readouterr().err


@pytest.fixture
def index_404(http_server: Server) -> str:  # noqa: F811
    """A loopback package index that answers 404 to everything, like a wrong project name (the shared
    loopback server with no routes)."""
    return f"http://__token__:{TOKEN}@127.0.0.1:{http_server.port}/simple"


def test_index_errors_never_show_the_token(index_404: str) -> None:
    with pytest.raises(FetchError) as e:
        index.resolve(index_404, PKG, FAST)
    assert TOKEN not in str(e.value)
    assert "http://***@127.0.0.1:" in str(e.value)


def test_a_password_with_a_slash_is_refused_without_quoting_it(index_404: str) -> None:
    """requests' own InvalidURL text quotes the userinfo up to the '/': half the secret."""
    with pytest.raises(ConfigError) as e:
        index.resolve(index_404.replace(TOKEN, SECRET), PKG, FAST)
    assert "canary" not in str(e.value)
    assert "percent-encode" in str(e.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_retry_lines_and_give_up_message_never_show_the_token(tmp_path: Path, capfd) -> None:
    url = f"http://__token__:{TOKEN}@127.0.0.1:{_closed_port()}/files/x.tar.gz"
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "x.tar.gz", what="x.tar.gz", sha256="0" * 64, policy=FAST)
    printed = capfd.readouterr().err
    assert "retrying" in printed
    assert TOKEN not in str(e.value) + printed


@pytest.mark.parametrize(
    "endpoint",
    [
        f"AKIAEXAMPLE:{SECRET}@minio.local:9000",  # MinIO style: the '/' makes the rest a path
        f"http://AKIAEXAMPLE:{SECRET}@minio.local:notaport",
        f"http://AKIAEXAMPLE:{SECRET}@minio.local:9000/bucket",
        f"ftp://AKIAEXAMPLE:{SECRET}@minio.local:9000",
    ],
)
def test_a_malformed_endpoint_with_credentials_is_not_echoed(endpoint: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            env={"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
            defaults={"bucket": "whisper-releases", "prefix": ""},
        )
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("endpoint", [f"http://AKIA:{SECRET}@127.0.0.1:9/x", f"AKIA:{SECRET}@127.0.0.1:abc"])
def test_the_shell_publisher_does_not_echo_endpoint_credentials(endpoint: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_"))}
    env.update(AWS_ENDPOINT_URL=endpoint, MINIO_SECURE="false")
    p = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert "is not http(s)://host[:port]" in p.stderr
    assert SECRET not in p.stdout + p.stderr
    assert "***@127.0.0.1" in p.stderr
