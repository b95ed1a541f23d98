"""Load, encoder and whole-transcription time of every configuration in bench.matrix.

Timed with pytest-benchmark around one worker round trip (the work runs in a process of its own;
the pipe adds well under a millisecond to seconds). extra_info carries what the report needs:
engine, build, model, quantisation, threads, peak RSS, audio length, real-time factor and WER.
"""

from __future__ import annotations

from typing import Any

from whisper_release.bench.engines import DecodeOptions
from whisper_release.bench.host import CpuMonitor
from whisper_release.bench.matrix import Config, clip_seconds
from whisper_release.verify import wer


def _info(benchmark: Any, cfg: Config, op: str, env: dict[str, Any], **extra: Any) -> None:
    benchmark.group = f"{op}:{cfg.model}" + (f":{extra['decode']}" if "decode" in extra else "")
    benchmark.extra_info.update(
        {
            "config": cfg.id,
            "engine": cfg.engine,
            "build": cfg.build,
            "model": cfg.model,
            "quant": cfg.quant,
            "op": op,
            "threads": env["threads"],
            "random_weights": cfg.random_weights,
            "label": "random weights" if cfg.random_weights else "real weights",
            **extra,
        }
    )


def _time_call(benchmark: Any, cfg: Config, w: Any, op: str, rounds: int, env: dict[str, Any]) -> None:
    """Time one worker call (`load` or `encode`) after a warm-up round, with others' CPU share."""
    with CpuMonitor([w.proc.pid]) as mon:
        benchmark.pedantic(lambda: w.call(op), rounds=rounds, warmup_rounds=1)
    _info(benchmark, cfg, op, env, peak_rss=w.call("rss"), foreign_cpu_share=mon.foreign_share,
          cpu_module=w.call("module"))  # fmt: skip


def test_load(
    benchmark: Any, case: Any, workers: Any, clips: list[wer.Clip], quiet_host: dict, request: Any
) -> None:
    cfg, _ = case
    w = workers.get(cfg, clips)
    _time_call(benchmark, cfg, w, "load", request.config.getoption("--bench-rounds") + 1, quiet_host)


def test_encode(
    benchmark: Any, case: Any, workers: Any, clips: list[wer.Clip], quiet_host: dict, request: Any
) -> None:
    cfg, _ = case
    w = workers.get(cfg, clips)
    w.call("load")
    _time_call(benchmark, cfg, w, "encode", request.config.getoption("--bench-rounds"), quiet_host)


def test_transcribe(
    benchmark: Any, case: Any, workers: Any, clips: list[wer.Clip], quiet_host: dict, request: Any
) -> None:
    cfg, decode = case
    w = workers.get(cfg, clips)
    if "load" not in cfg.ops:
        w.call("load")
    opts = DecodeOptions(**{**cfg.decode_options(decode).__dict__})
    texts: list[str] = []

    def run() -> None:
        texts[:] = w.call("transcribe", opts=opts.__dict__)

    # Warm-up: the whole set once (caches, thread pools, the beam decoders' buffers).
    with CpuMonitor([w.proc.pid]) as mon:
        benchmark.pedantic(run, rounds=request.config.getoption("--bench-rounds"), warmup_rounds=1)
    result = wer.corpus_wer([c.reference for c in clips], texts)
    audio_s = sum(clip_seconds(c.path) for c in clips)
    _info(
        benchmark,
        cfg,
        "transcribe",
        quiet_host,
        decode=decode,
        peak_rss=w.call("rss"),
        foreign_cpu_share=mon.foreign_share,
        audio_seconds=audio_s,
        n_clips=len(clips),
        rtf=benchmark.stats.stats.median / audio_s,
        wer=result.wer,
        options={k: v for k, v in opts.__dict__.items() if v is not None},
        cpu_module=w.call("module"),
        stages_ms=w.call("stages"),  # whisper.cpp's per-stage time of the last round (None for peers)
    )
    assert texts and all(isinstance(t, str) for t in texts)
    # A broken build or wrong weights would time garbage fast: the real-weight runs must transcribe.
    ceilings = request.getfixturevalue("pins").verify.wer_ceiling.values()  # one table per WER set
    ceiling = max(float(c.get(cfg.model, 1.0)) for c in ceilings)
    assert result.wer <= ceiling + 0.10, f"{cfg.id} {decode}: WER {result.wer:.3f} on the sample set"
