"""Every port of the embedded SeaweedFS refuses an unauthenticated write (issue 13 item 7): real
HTTP requests to the real server's master, volume and filer ports, real HTTP/2 and TLS handshakes
on its gRPC ports; its run files are private; a pid recycled to another user's process does not
count as the server."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from whisper_release.core.errors import ConfigError
from whisper_release.publish.push import make_client
from whisper_release.s3.store import EmbeddedStore
from whisper_release.testing import require_tool

pytestmark = pytest.mark.integration


def _status(method: str, url: str, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = EmbeddedStore(tmp_path_factory.mktemp("store") / "store", bucket="ports-test", prefix="p")
    cfg = s.start()
    client = make_client(cfg)
    client.create_bucket(Bucket="ports-test")
    client.put_object(Bucket="ports-test", Key="keep/me.txt", Body=b"published bytes")
    try:
        yield s, cfg, client
    finally:
        s.stop(grace=1.0)


def _ports(s: EmbeddedStore) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads(s.state_path.read_text())["ports"].items()}


def test_master_http_takes_no_write(store) -> None:
    s, _cfg, client = store
    master = f"http://127.0.0.1:{_ports(s)['master.port']}"
    # /dir/assign would hand out a volume write token; /submit stores a file; /col/delete drops
    # every volume of a bucket; /vol/grow makes volumes.
    for method, path, body in (("GET", "/dir/assign", None), ("POST", "/submit", b"x"),
                               ("GET", "/col/delete?collection=ports-test", None),
                               ("GET", "/vol/grow?count=1", None)):
        code = _status(method, master + path, body)
        assert not 200 <= code < 300, f"master {method} {path} answered {code}"
    assert client.get_object(Bucket="ports-test", Key="keep/me.txt")["Body"].read() == b"published bytes"


def test_volume_http_takes_no_write_or_read_without_a_token(store) -> None:
    s, _cfg, _client = store
    volume = f"http://127.0.0.1:{_ports(s)['volume.port']}"
    assert _status("PUT", volume + "/1,01637037d6", b"planted") == 401
    assert _status("POST", volume + "/2,01637037d6", b"planted") == 401
    assert _status("DELETE", volume + "/1,01637037d6") == 401
    assert _status("GET", volume + "/1,01637037d6") == 401


def test_filer_http_takes_no_write(store) -> None:
    s, _cfg, client = store
    filer = f"http://127.0.0.1:{_ports(s)['filer.port']}"
    for method, path in (("PUT", "/buckets/ports-test/keep/planted.txt"), ("POST", "/planted.txt"),
                         ("DELETE", "/buckets/ports-test/keep/me.txt")):
        code = _status(method, filer + path, None if method == "DELETE" else b"planted")
        assert not 200 <= code < 300, f"filer {method} {path} answered {code}"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="ports-test").get("Contents", [])]
    assert keys == ["keep/me.txt"]


def test_run_files_and_sockets_are_private(store) -> None:
    s, _cfg, _client = store
    assert stat.S_IMODE(s.run_dir.stat().st_mode) == 0o700
    for name in ("ports.json", "state.json", "s3.json", "security.toml"):
        assert stat.S_IMODE((s.run_dir / name).stat().st_mode) == 0o600, name
    assert "[jwt.signing]" in (s.run_dir / "security.toml").read_text()
    ports = _ports(s)
    socks = [Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{ports[flag]}.sock")
             for flag in ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc")]
    socks += [Path(f"/tmp/seaweedfs-filer-{ports['filer.port']}.sock"),
              Path(f"/tmp/seaweedfs-s3-{ports['s3.port']}.sock")]
    present = [p for p in socks if p.is_socket()]
    assert present, "weed created none of its unix sockets"
    # Connecting to a unix socket needs write permission on it.
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in present), present


GRPC_FLAGS = ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc")
# An HTTP/2 client preface and an empty SETTINGS frame: how every plaintext gRPC call begins.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _plaintext_h2_reply(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(H2_PREFACE)
        try:
            return s.recv(64)
        except (ConnectionResetError, TimeoutError):
            return b""


def _tls_call(port: int, ca: Path, cert: Path | None, key: Path | None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(H2_PREFACE)
        return s.recv(64)


def test_grpc_ports_take_no_call_without_the_stores_client_certificate(store) -> None:
    s, _cfg, _client = store
    ports = _ports(s)
    pki = s.run_dir / "pki"
    for flag in GRPC_FLAGS:
        # Plaintext gRPC (what any local user's client sends by default) gets no HTTP/2 SETTINGS back.
        reply = _plaintext_h2_reply(ports[flag])
        assert reply[3:4] != b"\x04", f"{flag} answered plaintext HTTP/2: {reply!r}"
        # TLS without a client certificate from the store's CA is refused...
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _tls_call(ports[flag], pki / "ca.crt", None, None)
        # ...and with it the port speaks gRPC's HTTP/2: the refusal above is the certificate's doing.
        reply = _tls_call(ports[flag], pki / "ca.crt", pki / "node.crt", pki / "node.key")
        assert reply[3:4] == b"\x04", flag
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in pki.glob("*.key"))


def _other_users_weed() -> subprocess.Popen[bytes] | int:
    """A live process of another uid that looks like weed: under root one started as nobody with
    setpriv; otherwise pid 1 (root's)."""
    if os.getuid() != 0:
        assert os.stat("/proc/1").st_uid != os.getuid()
        return 1
    setpriv = require_tool("setpriv", "util-linux: starts a process of another user")
    return subprocess.Popen([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                             "exec -a /usr/local/bin/weed sleep 120"])


def test_stale_pid_now_owned_by_another_user_is_not_running(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "store", bucket="ports-test", prefix="p")
    other = _other_users_weed()
    pid = other if isinstance(other, int) else other.pid
    try:
        for _ in range(50):  # until the child has exec'd under its new name
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"weed"):
                break
            time.sleep(0.05)
        assert os.stat(f"/proc/{pid}").st_uid != os.getuid()
        s.run_dir.mkdir(parents=True)
        s.state_path.write_text(json.dumps({"pid": pid, "ports": {"s3.port": 9}, "started": 0}))
        assert not s.status().running
    finally:
        if not isinstance(other, int):
            other.kill()
            other.wait()


def _weed_processes_of(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"weed") and any(str(root).encode() in a for a in cmd):
                pids.append(int(proc.name))
    return pids


def test_bad_bucket_is_refused_before_a_server_is_left_running(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "store", bucket="b", prefix="p")
    try:
        with pytest.raises(ConfigError, match="bucket .* name 'b' is 1 characters long"):
            s.start()
        assert _weed_processes_of(s.root) == []
    finally:
        for pid in _weed_processes_of(s.root):  # an orphan of the old code: stop it
            os.killpg(pid, 9)
