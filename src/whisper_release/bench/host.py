"""A quiet host: the CPU lock, the refusal to time beside a build, and what a run records of the host.

Timing on 2 shared cores is only meaningful when nothing else compiles: a build running beside
a benchmark triples its numbers (FACTS.md). So every timed run takes the machine-wide CPU lock
and refuses to start while a compiler, `cmake --build` or `docker build` process exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from whisper_release.core import settings
from whisper_release.core.console import info
from whisper_release.core.errors import ToolError
from whisper_release.core.pins import Pins, load_pins

MAX_LOAD = 1.5
# A timing during which other processes took more than this share of the CPUs is disturbed: `bench tune`
# discards and retries such a round, the report flags such a measurement.
MAX_FOREIGN_SHARE = 0.10


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
def cpu_lock(path: Path | None = None, timeout: float = 1800.0) -> Iterator[None]:
    """The machine-wide exclusive CPU lock every timing run and reference build holds."""
    path = path or settings.get("WHISPER_RELEASE_CPU_LOCK")
    assert path is not None
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
        "whisper_cpp": pins.source.version,
        "release": pins.release_version,
        "faster_whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "pywhispercpp": _version("pywhispercpp"),
        "numpy": np.__version__,
        "load_average_at_start": round(load_average(), 2),
    }
