"""The consumer as a worker installs it: the project's wheel in a fresh venv outside the checkout (no
release.toml anywhere near, no extras), pulling a published release from the embedded store and
transcribing jfk.wav. Proves the consumer needs no pins, no fetch stack and no S3 server binary.

Needs the built artifacts (`invoke build`) and the package index (or a warm pip cache) for the wheel's
own dependencies (boto3, numpy, tqdm).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_consumer_transcribe import artifacts, jfk, reference, store_env, wer  # noqa: F401  (fixtures)

from whisper_release.core.paths import project_root

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def consumer_venv(tmp_path_factory) -> Path:
    """A venv holding only the wheel of this checkout and its required dependencies."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where / "dist"),
         str(project_root())],
        check=True, timeout=600,
    )
    (wheel,) = (where / "dist").glob("whisper_release-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=900)
    return venv


def test_the_wheel_brings_no_server_fetch_stack_or_test_tools(consumer_venv: Path) -> None:
    py = str(consumer_venv / "bin" / "python")
    code = (
        "import importlib.util as u;"
        "print([m for m in ('requests', 'pytest', 'jiwer', 'whisper_normalizer')"
        " if u.find_spec(m)])"
    )
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    assert not (consumer_venv / "bin" / "weed").exists()
    version = subprocess.run(
        [str(consumer_venv / "bin" / "whisper-release"), "--version"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert version.startswith("whisper-release ") and "unknown" not in version


def test_a_wheel_installed_consumer_pulls_and_transcribes(
    consumer_venv: Path, store_env: dict[str, str], jfk: Path, reference: str, tmp_path: Path  # noqa: F811
) -> None:
    exe = str(consumer_venv / "bin" / "whisper-release")
    work = tmp_path / "worker"  # far from the checkout: no release.toml above it
    work.mkdir()
    env = {**store_env, "PATH": f"{consumer_venv / 'bin'}:/usr/bin:/bin"}
    env.pop("WHISPER_RELEASE_ROOT", None)
    env.pop("PYTHONPATH", None)
    listing = subprocess.run([exe, "pull", "--list", "--json"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert '"version": "e2e-r1"' in listing.stdout
    pulled = subprocess.run([exe, "pull", "--release", "latest", "--model", "base", "--dest", "base"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    assert "%|" not in pulled.stderr  # no progress bar off a terminal
    dest = work / "base"
    assert (dest / "artifact.json").is_file()
    out = subprocess.run([exe, "transcribe", str(jfk), "--artifact", str(dest), "--threads", "2"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert wer(reference, out.stdout) == 0.0, out.stdout
    # It ran the wheel's code, not the checkout's.
    where = subprocess.run([str(consumer_venv / "bin" / "python"), "-c",
                            "import whisper_release; print(whisper_release.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert str(consumer_venv) in where and not where.startswith(str(project_root() / "src"))
    assert not any(p.name == "release.toml" for d in (work, *work.parents) for p in d.glob("release.toml"))
    assert os.path.isdir(dest)
