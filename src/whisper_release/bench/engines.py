"""The engines the benchmark times: whisper.cpp through the project's ctypes binding, faster-whisper
(CTranslate2) and the pywhispercpp wheel, each driven inside a worker process of its own.

Every libwhisper build ships libggml*.so.0 under the same SONAMEs: two builds in one process would
share the first one's ggml. So each (engine, build) runs in a worker process of its own, which
also gives each configuration its own peak RSS.

The knobs the speed investigation varies (flash attention, decoding defaults) are parameters here,
so the benchmark suite and docs/performance.md use the same code.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import subprocess
import sys
import time
from ctypes import POINTER, c_float, c_int
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError, ToolError, VerificationError
from whisper_release.runtime import audio, binding
from whisper_release.runtime.binding import fitted_audio_ctx  # one formula for the benchmark and the product

# faster-whisper held to the artifact's instruction set: CTranslate2's own kernels (CT2_FORCE_CPU_ISA),
# Intel MKL's and oneDNN's dispatch all capped at AVX2, so on an AVX-512/VNNI/AMX host the peer
# comparison is ISA for ISA as well as engine for engine.
CT2_AVX2_ENV = {"CT2_FORCE_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@dataclass(frozen=True)
class DecodeOptions:
    """The decoding knobs the speed investigation varies (whisper.cpp's whisper_full_params)."""

    beam: int = 0  # 0: greedy
    best_of: int | None = None  # greedy candidates at t > 0 (whisper.cpp default 5)
    temperature_fallback: bool = True  # False: temperature_inc = 0, one pass per window
    no_context: bool | None = None
    single_segment: bool | None = None
    no_timestamps: bool | None = None
    fit_audio_ctx: bool = False  # encode only as many frames as the clip has (whisper.cpp -ac)
    audio_ctx_floor: int = 0  # never fit below this many encoder frames (clips under 15 s; 1500 = 30 s)


@dataclass(frozen=True)
class EngineSpec:
    """One engine to time: kind 'whisper.cpp' (lib_dir + ggml model), 'faster-whisper' (CT2 dir,
    compute_type) or 'pywhispercpp' (ggml model, its own bundled build)."""

    kind: str
    model: str
    lib_dir: str | None = None
    compute_type: str | None = None
    flash_attn: bool | None = None  # None: the library's default (on in v1.8.5)
    env: dict[str, str] = field(default_factory=dict)


# The stages whisper_print_timings totals (whisper.cpp v1.8.5): "<stage> time = <ms> ms" lines in the
# library's log. (whisper_get_timings gives per-run averages, not totals, and allocates each call.)
STAGES = ("mel", "sample", "encode", "decode", "batchd", "prompt")
_STAGE_LINE = re.compile(r"whisper_print_timings:\s+(\w+) time =\s+([0-9.]+) ms")


def stage_totals(log_lines: list[str]) -> dict[str, float]:
    """Milliseconds per stage from the last whisper_print_timings report in `log_lines`."""
    out: dict[str, float] = {}
    for line in log_lines:
        m = _STAGE_LINE.search(line)
        if m and m.group(1) in STAGES:
            out[m.group(1)] = float(m.group(2))
    return out


class _WhisperCppEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.w = binding.load(spec.lib_dir or "", required_flags=[])
        lib = self.w.lib
        for name, restype, argtypes in (
            ("whisper_set_mel", c_int, [ctypes.c_void_p, POINTER(c_float), c_int, c_int]),
            ("whisper_encode", c_int, [ctypes.c_void_p, c_int, c_int]),
            ("whisper_print_timings", None, [ctypes.c_void_p]),
            ("whisper_reset_timings", None, [ctypes.c_void_p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib
        self.spec = spec
        self.ctx: int | None = None
        self.stage_ms: dict[str, float] = {}

    def load(self, threads: int) -> None:
        self.close()
        cparams = self.lib.whisper_context_default_params()
        cparams.use_gpu = False
        if self.spec.flash_attn is not None:
            cparams.flash_attn = bool(self.spec.flash_attn)
        ctx = self.lib.whisper_init_from_file_with_params(os.fsencode(self.spec.model), cparams)
        if not ctx:
            raise VerificationError(
                f"whisper.cpp could not load {self.spec.model}: {self.w.recent_log()[-2:]}"
            )
        self.ctx = ctx

    def close(self) -> None:
        if self.ctx:
            self.lib.whisper_free(self.ctx)
            self.ctx = None

    def encode(self, threads: int) -> None:
        # whisper-bench's method: an empty mel, then one full 30 s encoder pass.
        n_mels = self.lib.whisper_model_n_mels(self.ctx)
        if self.lib.whisper_set_mel(self.ctx, None, 0, n_mels) != 0 or self.lib.whisper_encode(
            self.ctx, 0, threads
        ):
            raise VerificationError(f"whisper_encode failed on {self.spec.model}: {self.w.recent_log()[-2:]}")

    def transcribe(self, pcm: np.ndarray, threads: int, opts: DecodeOptions) -> str:
        lib = self.lib
        strategy = binding.WHISPER_SAMPLING_BEAM_SEARCH if opts.beam else binding.WHISPER_SAMPLING_GREEDY
        p = lib.whisper_full_default_params(strategy)
        p.n_threads = threads
        p.print_progress = p.print_realtime = p.print_timestamps = p.print_special = False
        p.language = b"en"
        if opts.beam:
            p.beam_search.beam_size = opts.beam
        if opts.best_of is not None:
            p.greedy.best_of = opts.best_of
        if not opts.temperature_fallback:
            p.temperature_inc = 0.0
        for name in ("no_context", "single_segment", "no_timestamps"):
            v = getattr(opts, name)
            if v is not None:
                setattr(p, name, bool(v))
        if opts.fit_audio_ctx:
            p.audio_ctx = fitted_audio_ctx(pcm.size, floor=opts.audio_ctx_floor)
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        lib.whisper_reset_timings(self.ctx)
        rc = lib.whisper_full(self.ctx, p, pcm.ctypes.data_as(POINTER(c_float)), int(pcm.size))
        if rc != 0:
            raise VerificationError(f"whisper_full failed ({rc}) on {self.spec.model}.")
        lib.whisper_print_timings(self.ctx)
        for k, ms in stage_totals(self.w.recent_log()).items():
            self.stage_ms[k] = self.stage_ms.get(k, 0.0) + ms
        n = lib.whisper_full_n_segments(self.ctx)
        return "".join(
            (lib.whisper_full_get_segment_text(self.ctx, i) or b"").decode("utf-8", "replace")
            for i in range(n)
        )


class _FasterWhisperEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.model: Any = None

    def load(self, threads: int) -> None:
        # faster-whisper is an optional peer ([bench] extra), imported by its worker process alone.
        from faster_whisper import WhisperModel

        self.model = None
        self.model = WhisperModel(
            self.spec.model,
            device="cpu",
            compute_type=self.spec.compute_type or "int8",
            cpu_threads=threads,
            num_workers=1,
        )

    def close(self) -> None:
        self.model = None

    def encode(self, threads: int) -> None:
        # Installed with faster-whisper ([bench] extra); only its worker process needs it.
        import ctranslate2

        n_mels = self.model.feature_extractor.mel_filters.shape[0]
        features = np.zeros((1, n_mels, 3000), dtype=np.float32)
        self.model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)

    def transcribe(self, pcm: np.ndarray, threads: int, opts: DecodeOptions) -> str:
        kw: dict[str, Any] = {"language": "en", "beam_size": opts.beam or 1}
        if not opts.temperature_fallback:
            kw["temperature"] = 0.0
        if opts.no_context:
            kw["condition_on_previous_text"] = False
        if opts.no_timestamps:
            kw["without_timestamps"] = True
        segments, _info = self.model.transcribe(pcm, **kw)
        return "".join(s.text for s in segments)


class _PyWhisperCppEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.models: dict[int, Any] = {}

    def _model(self, beam: int, threads: int) -> Any:
        # pywhispercpp is an optional peer ([bench] extra), imported by its worker process alone.
        from pywhispercpp.model import Model

        if beam not in self.models:
            kw: dict[str, Any] = {}
            if beam:
                kw["beam_search"] = {"beam_size": beam, "patience": -1.0}
            self.models[beam] = Model(
                self.spec.model,
                params_sampling_strategy=1 if beam else 0,
                redirect_whispercpp_logs_to=None,
                n_threads=threads,
                language="en",
                print_progress=False,
                print_realtime=False,
                **kw,
            )
        return self.models[beam]

    def load(self, threads: int) -> None:
        self.models.clear()
        self._model(0, threads)

    def close(self) -> None:
        self.models.clear()

    def encode(self, threads: int) -> None:
        raise ConfigError("pywhispercpp exposes no encoder-only call; time its transcription instead.")

    def transcribe(self, pcm: np.ndarray, threads: int, opts: DecodeOptions) -> str:
        return "".join(s.text for s in self._model(opts.beam, threads).transcribe(pcm.astype(np.float32)))


_ENGINES = {
    "whisper.cpp": _WhisperCppEngine,
    "faster-whisper": _FasterWhisperEngine,
    "pywhispercpp": _PyWhisperCppEngine,
}


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker_main(stdin: Any = None, stdout: Any = None) -> int:
    """The worker process: JSON requests on stdin, one JSON answer line each on stdout.

    ops: init {spec}, load, encode, audio {paths}, transcribe {opts, threads}, rss, module, stages, quit.
    Timings are taken here too (`seconds`), around the library call alone."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    engine: Any = None
    clips: list[np.ndarray] = []
    threads = settings.get("BENCH_THREADS")

    def send(answer: dict[str, Any]) -> None:
        out.write(json.dumps(answer) + "\n")
        out.flush()

    for line in stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            t0 = time.perf_counter()
            result: Any = None
            if op == "init":
                spec = EngineSpec(**req["spec"])
                engine = _ENGINES[spec.kind](spec)
            elif op == "load":
                engine.load(threads)
            elif op == "encode":
                engine.encode(threads)
            elif op == "audio":
                clips = [audio.read_wav(p) for p in req["paths"]]
            elif op == "transcribe":
                opts = DecodeOptions(**req.get("opts", {}))
                if hasattr(engine, "stage_ms"):
                    engine.stage_ms = {}
                result = [engine.transcribe(c, threads, opts) for c in clips]
            elif op == "stages":  # whisper.cpp's own stage timings of the last transcribe op (ms)
                result = getattr(engine, "stage_ms", None)
            elif op == "rss":
                result = peak_rss_bytes()
            elif op == "module":  # the CPU module the binding registered (whisper.cpp only)
                w = getattr(engine, "w", None)
                result = w.cpu_module.variant if w is not None else None
            elif op == "quit":
                send({"ok": True})
                return 0
            else:
                raise ConfigError(f"unknown worker op {op!r}")
            answer = {"ok": True, "seconds": time.perf_counter() - t0, "result": result}
        except Exception as e:  # reported to the parent, which raises it as one clear error
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        send(answer)
    return 0


class Worker:
    """A worker process for one engine configuration; each call is one round trip."""

    def __init__(self, spec: EngineSpec, threads: int = 2) -> None:
        env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **spec.env)
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whisper_release.bench", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.call("init", spec=asdict(spec))

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise ToolError(
                f"The benchmark worker for {self.spec.kind} {self.spec.model} died during {op!r} "
                f"(exit code {self.proc.poll()})."
            )
        ans = json.loads(line)
        if not ans["ok"]:
            raise ToolError(
                f"The benchmark worker for {self.spec.kind} {self.spec.model} failed at {op!r}: "
                f"{ans['error']}."
            )
        return ans.get("result")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except ToolError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
