"""Resolve a pinned package file to a download URL through the package index's simple API.

The PEP 503 page `<index>/<normalized-name>/` lists every file of a project as a link whose
`#sha256=` fragment carries the file's hash; the JSON API is not needed (and not reachable from
every network this runs on). A listed hash that differs from the pin is refused before any
download starts.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from whisper_release.core.errors import FetchError, VerificationError
from whisper_release.core.pins import PackageFile
from whisper_release.core.redact import redact_url
from whisper_release.inputs.download import RetryPolicy, get_text


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def project_page_url(index_url: str, name: str) -> str:
    return f"{index_url.rstrip('/')}/{normalize(name)}/"


def find_link(page_html: str, page_url: str, pkg: PackageFile) -> str:
    """The absolute URL of `pkg.filename` on a simple page, checked against the pinned sha256."""
    parser = _Links()
    parser.feed(page_html)
    shown = redact_url(page_url)
    for href, text in parser.links:
        url, frag = urldefrag(urljoin(page_url, href))
        basename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if pkg.filename not in (basename, text):
            continue
        m = re.search(r"(?:^|&)sha256=([0-9a-fA-F]{64})", frag)
        if m and m.group(1).lower() != pkg.sha256.lower():
            raise VerificationError(
                f"The package index lists {pkg.filename} with sha256 {m.group(1).lower()}, but release.toml "
                f"pins {pkg.sha256} ({shown}); the file was replaced or the pin is wrong: check before "
                f"changing the pin."
            )
        return url
    raise FetchError(
        f"{pkg.filename} ({pkg.name} {pkg.version}) is not listed on {shown} ({len(parser.links)} files "
        f"there); check the package name/version in release.toml or the index URL."
    )


def resolve(index_url: str, pkg: PackageFile, policy: RetryPolicy | None = None) -> str:
    """Download URL of a pinned package file (one request to the index)."""
    page_url = project_page_url(index_url, pkg.name)
    html = get_text(page_url, what=f"index page of {pkg.name}", policy=policy)
    return find_link(html, page_url, pkg)
