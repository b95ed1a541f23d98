"""`invoke fetch` for real, in a subprocess: bad input is one sentence and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_fetch_support import cache_files, http_server  # noqa: F401  (fixture)

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import SdistSource, load_pins, project_root


def invoke(args: list[str], cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "WHISPER_RELEASE_CACHE": str(cache),
        "WHISPER_RELEASE_RETRIES": "1",
        "WHISPER_RELEASE_BACKOFF": "0.01",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project_root(),
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_profile_exits_with_config_error(tmp_path: Path) -> None:
    proc = invoke(["fetch", "--profile", "nightly"], tmp_path / "cache")
    assert proc.returncode == ConfigError.exit_code
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: Unknown profile 'nightly': expected one of offline, production (defined in "
        f"{project_root() / 'release.toml'})."
    ]
    assert cache_files(tmp_path / "cache") == []


def test_wrong_bytes_from_the_index_exit_non_zero_and_leave_nothing(http_server, tmp_path: Path) -> None:  # noqa: F811
    """The real offline profile against a loopback index whose sdist has the right size, wrong bytes."""
    conf = load_pins().source_provider("pypi-sdist")
    assert isinstance(conf, SdistSource) and conf.size
    bogus = os.urandom(conf.size)
    index = http_server.add_simple_index(
        conf.package, {conf.filename: bogus}, sha256={conf.filename: conf.sha256}
    )
    proc = invoke(["fetch", "--profile", "offline"], tmp_path / "cache", WHISPER_RELEASE_INDEX_URL=index)
    assert proc.returncode == VerificationError.exit_code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Download of {conf.filename} from {http_server.url}/files/")
    assert f"but release.toml pins {conf.sha256}" in last and "deleted" in last
    assert cache_files(tmp_path / "cache") == []


def test_dry_run_on_empty_cache(tmp_path: Path) -> None:
    proc = invoke(
        ["fetch", "--profile", "offline", "--dry-run"],
        tmp_path / "cache",
        WHISPER_RELEASE_INDEX_URL="http://127.0.0.1:9/simple",
    )
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "would convert" in proc.stdout and "pywhispercpp 1.5.1" in proc.stdout
    assert cache_files(tmp_path / "cache") == []
