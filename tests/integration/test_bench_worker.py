"""The benchmark's worker process driving the real libwhisper of a built artifact: what every timed
whisper.cpp configuration goes through (`python -m whisper_release.bench worker`), minus the timing.

Needs the built artifacts (`invoke build`: dist/release_artifacts, or $WHISPER_RELEASE_ARTIFACTS) and
the pinned source's samples/jfk.wav from the fetch cache.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest

from whisper_release.bench.engines import DecodeOptions, EngineSpec, Worker
from whisper_release.bench.matrix import bench_threads, sample_clips
from whisper_release.core.pins import load_pins, project_root
from whisper_release.testing import unavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_artifact() -> Path:
    root = Path(os.environ.get("WHISPER_RELEASE_ARTIFACTS", project_root() / "dist" / "release_artifacts"))
    art = root / "whisper_tiny.en_xeon"
    if not (art / "libwhisper.so").is_file():
        unavailable(
            f"the built tiny.en artifact in {art} is missing (run `invoke build`)", "; CI builds it first"
        )
    return art


def test_the_worker_loads_encodes_and_transcribes_with_the_artifacts_library(tiny_artifact):
    pins = load_pins()
    (clip,) = sample_clips(pins, quick=True)
    spec = EngineSpec("whisper.cpp", str(tiny_artifact / "ggml-tiny.en-q5_1.bin"), lib_dir=str(tiny_artifact))
    with Worker(spec, bench_threads(pins)) as w:
        w.call("load")
        w.call("encode")
        w.call("audio", paths=[str(clip.path)])
        # A fitted audio_ctx keeps this cheap; the text proves the real library and weights ran.
        (text,) = w.call("transcribe", opts=asdict(DecodeOptions(fit_audio_ctx=True, audio_ctx_floor=750)))
        assert "ask not what your country can do for you" in text.lower()
        assert w.call("rss") > 10 * 2**20
    assert w.proc.poll() == 0  # `quit` ended it cleanly
