"""The embedded store's throwaway PKI (mTLS on its gRPC ports): made with the real openssl."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from whisper_release.core.errors import ToolError
from whisper_release.s3 import store
from whisper_release.testing import require_tool


def test_pki_is_private_and_the_node_certificate_is_signed_by_the_ca(tmp_path: Path) -> None:
    openssl = require_tool("openssl", "the embedded store's gRPC certificates")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    store._make_pki(run)
    pki = run / "pki"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for key in ("ca.key", "node.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key
    ok = subprocess.run([openssl, "verify", "-CAfile", str(pki / "ca.crt"), str(pki / "node.crt")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK"), ok.stderr
    toml = store._security_toml(run)
    for comp in store.GRPC_COMPONENTS:
        assert f"[grpc.{comp}]" in toml
    assert f'ca = "{pki / "ca.crt"}"' in toml and "[jwt.signing]" in toml


def test_missing_openssl_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(ToolError) as e:
        store._make_pki(tmp_path)
    assert str(e.value) == (
        "The embedded S3 store needs 'openssl' to make the certificates that close its gRPC ports to other "
        "local users; install it (Debian: apt-get install openssl)."
    )
    assert not (tmp_path / "pki").exists()
