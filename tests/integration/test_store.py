"""The embedded SeaweedFS store: loopback only, authentication on, secrets kept out of output."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from whisper_release.s3.store import EmbeddedStore, store_command

pytestmark = pytest.mark.integration


def _listening_addresses(pid: int) -> list[str]:
    """Local addresses of every TCP socket in LISTEN state owned by `pid` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                out.append(cols[1])
    return out


def test_store_binds_loopback_only_with_auth_and_private_secrets(tmp_path, monkeypatch, capfd):
    # A leaked AWS_* variable would make SeaweedFS create a second admin identity.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "LEAKEDKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaked-secret-0000")
    store = EmbeddedStore(tmp_path / "store", bucket="whisper-test", prefix="p")
    try:
        cfg = store.start()
        st = store.status()
        assert st.running and st.endpoint == cfg.endpoint
        addrs = _listening_addresses(st.pid)
        assert len(addrs) >= 8
        assert all(a.startswith("0100007F:") for a in addrs), addrs  # 127.0.0.1 in /proc's hex form
        environ = Path(f"/proc/{st.pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith((b"AWS_", b"MINIO_"))]
        for name in ("credentials.json", "run/s3.json", "run/state.json"):
            assert stat.S_IMODE((store.root / name).stat().st_mode) == 0o600, name
        # Authentication is on: an anonymous request is refused.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(cfg.endpoint + "/", timeout=5)
        assert e.value.code == 403
        env_file = store.write_env_file()
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"AWS_SECRET_ACCESS_KEY='{cfg.secret_key}'" in env_file.read_text()
        store_command(status=True, root=store.root)
        store_command(show_credentials=True, root=store.root)
        out, err = capfd.readouterr()
        assert cfg.secret_key not in out + err and "running" in out and str(env_file) in out
        assert cfg.secret_key not in repr(cfg) and cfg.secret_key not in str(store.status())
        # A second start finds the running server and keeps its credentials and endpoint.
        again = store.start()
        assert (again.endpoint, again.access_key) == (cfg.endpoint, cfg.access_key)
    finally:
        store.stop(grace=1.0)
    assert not store.status().running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(cfg.endpoint + "/", timeout=2)
    assert not store.stop()
