"""The speed investigation (docs/performance.md, `python -m whisper_release.bench tune`): what was
tried for speed, each variant timed against the library defaults on the same model, audio and threads,
under the CPU lock, with rounds disturbed by other processes discarded."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_release.bench.engines import CT2_AVX2_ENV, DecodeOptions, EngineSpec, Worker
from whisper_release.bench.host import MAX_FOREIGN_SHARE, CpuMonitor, check_quiet, environment, quiet_host
from whisper_release.bench.matrix import (
    artifact_dir,
    bench_threads,
    clip_seconds,
    ct2_model_dir,
    sample_clips,
)
from whisper_release.bench.references import reference_dir
from whisper_release.core.console import info
from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.inputs.fetch import fetch_model
from whisper_release.runtime import binding
from whisper_release.verify import wer


@dataclass(frozen=True)
class Variant:
    name: str
    spec: EngineSpec
    opts: DecodeOptions


def tuning_variants(
    model: str,
    q5_1: str,
    q8_0: str | None,
    ct2_dir: str,
    lib: str,
    f16: str | None = None,
    llamafile_lib: str | None = None,
) -> list[Variant]:
    """What was tried for speed, each against the library defaults (same model, audio, threads)."""
    cpp = EngineSpec("whisper.cpp", q5_1, lib_dir=lib)
    greedy, beam = DecodeOptions(), DecodeOptions(beam=5)
    no_fb = DecodeOptions(temperature_fallback=False)
    fit = DecodeOptions(fit_audio_ctx=True, temperature_fallback=False)
    out = [
        Variant("defaults (flash attention on), greedy", cpp, greedy),
        Variant("defaults, beam 5", cpp, beam),
        Variant("flash attention off", EngineSpec("whisper.cpp", q5_1, lib_dir=lib, flash_attn=False),
                greedy),
        Variant("OMP_WAIT_POLICY=passive", EngineSpec("whisper.cpp", q5_1, lib_dir=lib,
                                                      env={"OMP_WAIT_POLICY": "passive"}), greedy),
        Variant("OMP_WAIT_POLICY=active", EngineSpec("whisper.cpp", q5_1, lib_dir=lib,
                                                     env={"OMP_WAIT_POLICY": "active"}), greedy),
        Variant("OMP_PROC_BIND=close, OMP_PLACES=cores", EngineSpec(
            "whisper.cpp", q5_1, lib_dir=lib, env={"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}), greedy),
        Variant("temperature fallback off", cpp, no_fb),
        Variant("no_timestamps + single_segment", cpp, DecodeOptions(no_timestamps=True, single_segment=True,
                                                                     temperature_fallback=False)),
        Variant("audio_ctx fitted to the clip, fallback off", cpp, fit),
        Variant("audio_ctx fitted, beam 5", cpp, DecodeOptions(beam=5, fit_audio_ctx=True,
                                                              temperature_fallback=False)),
    ]  # fmt: skip
    out += [
        Variant(f"audio_ctx fitted, floor {floor}, fallback on", cpp, DecodeOptions(fit_audio_ctx=True,
                                                                                  audio_ctx_floor=floor))
        for floor in (750, 1000)
    ]  # fmt: skip
    if f16:
        out.append(Variant("f16 model, audio_ctx fitted", EngineSpec("whisper.cpp", f16, lib_dir=lib), fit))
    if q8_0:
        q8 = EngineSpec("whisper.cpp", q8_0, lib_dir=lib)
        out += [
            Variant("q8_0 model, greedy", q8, greedy),
            Variant("q8_0 model, audio_ctx fitted", q8, fit),
            Variant("q8_0 model, audio_ctx floor 750, fallback on", q8,
                    DecodeOptions(fit_audio_ctx=True, audio_ctx_floor=750)),
        ]  # fmt: skip
    if llamafile_lib:  # GGML_LLAMAFILE=ON: `python -m whisper_release.bench reference llamafile`
        models = [("q5_1", q5_1), *((("q8_0", q8_0),) if q8_0 else ()), *((("f16", f16),) if f16 else ())]
        out += [
            Variant(f"llamafile build, {q} model, greedy",
                    EngineSpec("whisper.cpp", path, lib_dir=llamafile_lib), greedy)
            for q, path in models
        ]  # fmt: skip
        if q8_0:
            out.append(Variant("llamafile build, q8_0 model, audio_ctx floor 750, fallback on",
                               EngineSpec("whisper.cpp", q8_0, lib_dir=llamafile_lib),
                               DecodeOptions(fit_audio_ctx=True, audio_ctx_floor=750)))  # fmt: skip
    ct2 = EngineSpec("faster-whisper", ct2_dir, compute_type="int8")
    ct2_avx2 = EngineSpec("faster-whisper", ct2_dir, compute_type="int8", env=dict(CT2_AVX2_ENV))
    out += [
        Variant("faster-whisper int8, greedy", ct2, greedy),
        Variant("faster-whisper int8, beam 5", ct2, beam),
        Variant("faster-whisper int8, AVX2 only, greedy", ct2_avx2, greedy),
        Variant("faster-whisper int8, AVX2 only, beam 5", ct2_avx2, beam),
    ]
    return out


def time_variant(v: Variant, clips: Sequence[Any], threads: int = 2, rounds: int = 2) -> dict[str, Any]:
    """Median seconds for the whole clip set (after one warm-up pass), WER and peak RSS."""
    with Worker(v.spec, threads) as w:
        w.call("load")
        w.call("audio", paths=[str(c.path) for c in clips])
        w.call("transcribe", opts=asdict(v.opts))
        times: list[float] = []
        shares: list[float] = []
        texts: list[str] = []
        attempts = 0
        while len(times) < rounds:
            check_quiet(max_load=None)
            with CpuMonitor([w.proc.pid]) as mon:
                t0 = time.perf_counter()
                texts = w.call("transcribe", opts=asdict(v.opts))
                dt = time.perf_counter() - t0
            attempts += 1
            # A round during which other processes took over 10% of the CPUs is not kept.
            if mon.foreign_share <= MAX_FOREIGN_SHARE or attempts >= 3 * rounds:
                times.append(dt)
                shares.append(mon.foreign_share)
            else:
                info(f"  round discarded ({v.name}): others took {mon.foreign_share:.0%} of the CPUs")
        rss = w.call("rss")
    result = wer.corpus_wer([c.reference for c in clips], texts)
    return {"variant": v.name, "median_s": float(np.median(times)), "times": times, "wer": result.wer,
            "foreign_cpu_share": max(shares),
            "peak_rss": rss, "opts": asdict(v.opts), "spec": asdict(v.spec)}  # fmt: skip


def tune(
    model: str = "base",
    *,
    rounds: int = 2,
    quick: bool = False,
    only: Sequence[str] = (),
    pins: Pins | None = None,
) -> Path:
    """Run the tuning variants (all, or those whose name contains one of `only`) on `model` under
    the CPU lock; write dist/bench/tuning-<model>[-quick].json and print a table."""
    pins = pins or load_pins()
    root = project_root()
    art = artifact_dir(model, root)
    q5 = art / f"ggml-{model}-q5_1.bin"
    # The artifact's own q8_0 file, when the release ships one ([build] quantize).
    q8_file = art / f"ggml-{model}-q8_0.bin"
    q8 = q8_file if q8_file.is_file() else None
    clips = sample_clips(pins, quick=quick, root=root)
    threads = bench_threads(pins)
    variants = tuning_variants(
        model, str(q5), str(q8) if q8 else None, str(ct2_model_dir(model, pins)), str(art),
        str(fetch_model(pins, model)),
        str(lf) if (lf := reference_dir("llamafile", root)).joinpath(binding.LIBRARY).is_file() else None,
    )  # fmt: skip
    if only:
        variants = [v for v in variants if any(o in v.name for o in only)]
    results = []
    with quiet_host():
        env = environment(threads, pins)
        for v in variants:
            r = time_variant(v, clips, threads, rounds)
            info(
                f"{r['median_s']:8.3f} s  WER {r['wer']:.3f}  RSS {r['peak_rss'] / 2**20:5.0f} MiB  {v.name}"
            )
            results.append(r)
    out = root / "dist" / "bench" / f"tuning-{model}{'-quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    audio_s = sum(clip_seconds(c.path) for c in clips)
    tmp.write_text(json.dumps({"environment": env, "model": model, "audio_seconds": audio_s,
                               "n_clips": len(clips), "results": results}, indent=2))  # fmt: skip
    os.replace(tmp, out)
    return out
