"""A real HTTP server on loopback (port 0) for the fetch tests: no tests in this module.

It serves byte strings at paths, can drop the connection mid-file for the first N requests of a
path, can answer 5xx, honours Range requests when asked to, and logs every request so a test can
prove what went over the wire.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Route:
    body: bytes
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops: int = 0  # ...for this many requests
    fail_status: int | None = None  # answer this status...
    fails: int = 0  # ...for this many requests
    ranges: bool = True
    stall: float = 0.0  # wait this long before answering...
    stalls: int = 0  # ...for this many requests
    content_type: str = "application/octet-stream"


@dataclass
class Server:
    host: str
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, path: str, body: bytes, **kw: object) -> str:
        self.routes[path] = Route(body, **kw)  # type: ignore[arg-type]
        return self.url + path

    def add_simple_index(
        self, project: str, files: dict[str, bytes], *, sha256: dict[str, str] | None = None
    ) -> str:
        """A PEP 503 page for `project` linking each file with its #sha256= fragment (overridable)."""
        links = []
        for name, body in files.items():
            digest = (sha256 or {}).get(name) or hashlib.sha256(body).hexdigest()
            self.add(f"/files/{project}/{name}", body)
            # relative href, as some mirrors serve them
            links.append(f'<a href="../../files/{project}/{name}#sha256={digest}">{name}</a><br/>')
        page = "<!DOCTYPE html><html><body><h1>Links</h1>\n" + "\n".join(links) + "\n</body></html>"
        self.add(f"/simple/{project}/", page.encode(), content_type="text/html")
        return self.url + "/simple"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.log if p == path)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            server.log.append((path, rng))
            route = server.routes.get(path)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if route.stall and route.stalls > 0:
                route.stalls -= 1
                time.sleep(route.stall)
            if route.fail_status and route.fails > 0:
                route.fails -= 1
                self.send_response(route.fail_status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, status, start = route.body, 200, 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if route.ranges and m and int(m.group(1)) < len(body):
                start, status = int(m.group(1)), 206
            self.send_response(status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(body) - start))
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if route.drop_after is not None and route.drops > 0:
                route.drops -= 1
                self.wfile.write(body[start : start + route.drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out or dropped us on purpose is what several tests do.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty fetch cache for one test, with fast retries."""
    d = tmp_path / "cache"
    monkeypatch.setenv("WHISPER_RELEASE_CACHE", str(d))
    monkeypatch.setenv("WHISPER_RELEASE_RETRIES", "1")
    monkeypatch.setenv("WHISPER_RELEASE_BACKOFF", "0.01")
    return d


@pytest.fixture
def http_server() -> Iterator[Server]:
    state = Server("127.0.0.1", 0)
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def dead_port_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# ---- pins and inputs made by the tests ----------------------------------------------------------

import copy  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import tarfile  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from whisper_release.core.pins import Pins, load_pins, parse_pins  # noqa: E402


def make_pins(tmp_path: Path, mutate: Any = None) -> Pins:
    """The real release.toml's pins, changed by `mutate(raw)` (so tests use the real schema)."""
    raw = copy.deepcopy(load_pins().raw)
    if mutate:
        mutate(raw)
    return parse_pins(raw, tmp_path / "release.toml")


def toy_tree() -> dict[str, tuple[bytes, int] | str]:
    """path -> (content, mode) or symlink target: a small stand-in for the whisper.cpp tree."""
    return {
        "CMakeLists.txt": (b"cmake_minimum_required(VERSION 3.14)\n", 0o644),
        "src/whisper.cpp": (b"int main() { return 0; }\n" * 50, 0o644),
        "models/download.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "samples/jfk.wav": (os.urandom(2000), 0o644),
        "include/whisper-link.h": "../src/whisper.cpp",
    }


def write_tree(root: Path, tree: dict[str, Any]) -> Path:
    for rel, spec in tree.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, str):
            os.symlink(spec, p)
        else:
            p.write_bytes(spec[0])
            p.chmod(spec[1])
    return root


def tar_gz(entries: dict[str, Any], *, pax_comment: str | None = None) -> bytes:
    """A .tar.gz of path -> (content, mode) | symlink target | ("hardlink", target)."""
    buf = io.BytesIO()
    headers = {"comment": pax_comment} if pax_comment else None
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers=headers) as tf:
        for name, spec in entries.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = 1704067200
            if isinstance(spec, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, spec
                tf.addfile(ti)
            elif spec[0] == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, spec[1]
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(spec[0]), spec[1]
                tf.addfile(ti, io.BytesIO(spec[0]))
    return buf.getvalue()


def wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def cache_files(root: Path) -> list[str]:
    """Every file in the cache outside tmp/ and locks/ (what a later run could find), relative paths."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.is_dir() and p.relative_to(root).parts[0] not in ("tmp", "locks")
    )
