"""download.download against a real HTTP server on loopback: good, wrong, truncated, dropped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_fetch_support import dead_port_url, http_server  # noqa: F401  (fixture)

from whisper_release.core.errors import FetchError, VerificationError
from whisper_release.inputs import download as dl

FAST = dl.RetryPolicy(retries=3, backoff=0.01, timeout=5)
BODY = os.urandom(3 * 1024 * 1024 + 17)
SHA256 = hashlib.sha256(BODY).hexdigest()
SHA1 = hashlib.sha1(BODY).hexdigest()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_good_file(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY)
    out = dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    assert out.read_bytes() == BODY
    assert _leftovers(tmp_path) == ["f.bin"]


def test_sha1_pin(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY)
    dl.download(url, tmp_path / "f.bin", what="model", size=len(BODY), sha1=SHA1, policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_wrong_bytes_sha256_is_deleted(http_server, tmp_path: Path) -> None:  # noqa: F811
    evil = bytearray(BODY)
    evil[12345] ^= 1
    url = http_server.add("/f.bin", bytes(evil))
    with pytest.raises(VerificationError) as ei:
        dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    msg = str(ei.value)
    assert url in msg and SHA256 in msg and hashlib.sha256(evil).hexdigest() in msg and "deleted" in msg
    assert _leftovers(tmp_path) == []


def test_wrong_bytes_sha1_is_deleted(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/m.bin", BODY[::-1])
    with pytest.raises(VerificationError, match="sha1"):
        dl.download(url, tmp_path / "m.bin", what="model", size=len(BODY), sha1=SHA1, policy=FAST)
    assert _leftovers(tmp_path) == []


def test_truncated_file(http_server, tmp_path: Path) -> None:  # noqa: F811
    # The server delivers a complete, shorter response: nothing to retry, the size check names it.
    url = http_server.add("/f.bin", BODY[:-1000])
    with pytest.raises(VerificationError, match="truncated") as ei:
        dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    assert str(len(BODY)) in str(ei.value) and str(len(BODY) - 1000) in str(ei.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_dropped_mid_file_is_retried_then_verified(http_server, tmp_path: Path, ranges: bool) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY, drop_after=1024 * 1024 + 3, drops=2, ranges=ranges)
    out = dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    assert out.read_bytes() == BODY
    assert http_server.hits("/f.bin") == 3
    ranges_sent = [r for p, r in http_server.log if p == "/f.bin"]
    assert ranges_sent[0] is None
    # The client asks to resume from what it has; a server without ranges gets a fresh start.
    # (up to one read chunk of what arrived may be lost with the broken connection).
    offset = int(ranges_sent[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 1024 * 1024 + 3
    assert _leftovers(tmp_path) == ["f.bin"]


def test_5xx_is_retried(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY, fail_status=503, fails=2)
    dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    assert http_server.hits("/f.bin") == 3


def test_stalled_server_times_out_then_retried(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY, stall=1.5, stalls=1)
    policy = dl.RetryPolicy(retries=2, backoff=0.01, timeout=0.3)
    dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=policy)
    assert http_server.hits("/f.bin") == 2
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_always_dropping_gives_up_with_fetch_error(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY, drop_after=10, drops=100, ranges=False)
    with pytest.raises(FetchError, match="after 4 attempts") as ei:
        dl.download(url, tmp_path / "f.bin", what="test file", size=len(BODY), sha256=SHA256, policy=FAST)
    assert url in str(ei.value)
    assert http_server.hits("/f.bin") == 4
    assert _leftovers(tmp_path) == []


def test_404_is_not_retried(http_server, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(FetchError, match="HTTP 404"):
        dl.download(http_server.url + "/nope", tmp_path / "f", what="x", sha256=SHA256, policy=FAST)
    assert http_server.hits("/nope") == 1
    assert _leftovers(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    url = dead_port_url() + "/f.bin"
    with pytest.raises(FetchError, match="Could not download test file"):
        dl.download(url, tmp_path / "f.bin", what="test file", sha256=SHA256, policy=FAST)
    assert _leftovers(tmp_path) == []


def test_failing_check_deletes_file(http_server, tmp_path: Path) -> None:  # noqa: F811
    url = http_server.add("/f.bin", BODY)

    def check(p: Path) -> None:
        assert p.read_bytes() == BODY
        raise VerificationError("hparams differ")

    with pytest.raises(VerificationError, match="hparams differ"):
        dl.download(url, tmp_path / "f.bin", what="test file", sha256=SHA256, check=check, policy=FAST)
    assert _leftovers(tmp_path) == []


def test_retry_policy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_RELEASE_RETRIES", "2")
    monkeypatch.setenv("WHISPER_RELEASE_BACKOFF", "0.25")
    p = dl.RetryPolicy.from_env()
    assert (p.retries, p.backoff) == (2, 0.25)
    monkeypatch.setenv("WHISPER_RELEASE_TIMEOUT", "soon")
    from whisper_release.core.errors import ConfigError

    with pytest.raises(ConfigError, match="WHISPER_RELEASE_TIMEOUT"):
        dl.RetryPolicy.from_env()
