"""binding: the token cap (`max_tokens`) really bounds what the decoder produces, on the built library.

Needs built artifacts: $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts (CI builds first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from whisper_release.core.errors import ConfigError
from whisper_release.core.pins import load_pins, project_root
from whisper_release.layout.artifacts import load_metadata, primary_model_file
from whisper_release.runtime import audio, binding
from whisper_release.testing import unavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctx():
    env = os.environ.get("WHISPER_RELEASE_ARTIFACTS")
    root = Path(env) if env else project_root() / "dist" / "release_artifacts"
    dirs = sorted(root.glob("whisper_*_xeon"), key=lambda d: sum(p.stat().st_size for p in d.iterdir()))
    if not dirs:
        unavailable(f"no built artifacts under {root}; run `invoke build` (or set WHISPER_RELEASE_ARTIFACTS)")
    d = dirs[0]
    meta = load_metadata(d)
    with binding.load(d, required_flags=meta["required_cpu_flags"]).open(d / primary_model_file(meta)) as c:
        yield c


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    from whisper_release.inputs.fetch import fetch_source

    pins = load_pins()
    src = fetch_source(pins, pins.profile("offline").source)
    return audio.read_wav(next(Path(src).glob("samples/jfk.wav")))


def test_max_tokens_caps_the_decoded_text(ctx, jfk) -> None:
    full = "".join(s.text for s in ctx.transcribe(jfk, threads=2))
    capped = ctx.transcribe(jfk, threads=2, max_tokens=3)
    text = "".join(s.text for s in capped)
    # A segment holds at most 3 text tokens: at most 3 words, fewer than the 22 of the full sentence.
    assert len(full.split()) >= 20, full
    assert all(len(s.text.split()) <= 3 for s in capped), capped
    assert len(text) < len(full), (text, full)


def test_negative_max_tokens_is_refused(ctx) -> None:
    with pytest.raises(ConfigError, match=r"max_tokens .* must be 0 \(no cap\) or more, got -1\."):
        ctx.transcribe(np.zeros(16000, dtype=np.float32), max_tokens=-1)
