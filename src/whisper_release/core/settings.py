"""Every environment knob the library reads, each parsed and checked here and nowhere else.

A knob set to something unusable stops the run with one ConfigError naming the variable, the
value, what was expected and what to do: `WHISPER_RELEASE_RETRIES=-1` once ran zero download
attempts and ended in a FileNotFoundError far from its cause. An unset or empty knob means its
default. Code elsewhere calls `get(NAME)`; a unit test proves no module reads a knob from
os.environ directly (copying the whole environment for a child process is fine).

The S3 settings (AWS_*, MINIO_* endpoint, keys, bucket, prefix, region) are a group validated
together by whisper_release.s3.config, which names the source of each; only MINIO_SECURE, a
plain switch, is parsed here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from whisper_release.core.errors import ConfigError
from whisper_release.core.redact import redact_url


class _Invalid(ValueError):
    """Raised by a parser with the 'expected ...' half of the message."""


@dataclass(frozen=True)
class Knob:
    name: str
    parse: Callable[[str], Any]
    default: Any
    example: str
    doc: str


def _integer(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise _Invalid(f"a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"a whole number from {lo} to {hi}")
        return value

    return parse


def _number(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    want = f"a number above {lo:g} and at most {hi:g}" if lo_open else f"a number from {lo:g} to {hi:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid(want) from None
        if not math.isfinite(value) or value < lo or (lo_open and value == lo) or value > hi:
            raise _Invalid(want)
        return value

    return parse


def _switch(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _Invalid("true or false (also 1/0, yes/no, on/off)")


def _directory(raw: str) -> Path:
    """A directory that may not exist yet (it is created on use), but is not a file."""
    if "\0" in raw:
        raise _Invalid("a directory path")
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise _Invalid("a directory, and this path is an existing file")
    return path.resolve()


def _existing_directory(raw: str) -> Path:
    path = _directory(raw)
    if not path.is_dir():
        raise _Invalid("an existing directory")
    return path


def _project_root(raw: str) -> Path:
    path = _existing_directory(raw)
    if not (path / "release.toml").is_file():
        raise _Invalid("the repository root, the directory holding release.toml")
    return path


def _file_path(raw: str) -> Path:
    """A file that may not exist yet, in a directory that does."""
    if "\0" in raw or raw.endswith("/"):
        raise _Invalid("a file path")
    path = Path(raw).expanduser()
    if path.is_dir():
        raise _Invalid("a file path, and this path is a directory")
    return path


def _http_url(raw: str) -> str:
    try:
        parts = urlsplit(raw.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _Invalid("an http(s) URL such as https://pypi.org/simple") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("an http(s) URL such as https://pypi.org/simple")
    return raw.strip().rstrip("/")


def _variant_name(raw: str) -> str:
    value = raw.strip()
    if not value.isascii() or not value.isalnum() or not value.islower():
        raise _Invalid("a CPU module name such as haswell, skylakex or zen4")
    return value


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("WHISPER_RELEASE_RETRIES", _integer(0, 20), 5, "5",
             "retries of a failed download (so at most N+1 attempts)"),
        Knob("WHISPER_RELEASE_BACKOFF", _number(0.0, 300.0), 1.0, "1",
             "seconds before the first retry; doubled each retry"),
        Knob("WHISPER_RELEASE_TIMEOUT", _number(0.0, 3600.0, lo_open=True), 60.0, "60",
             "seconds a download may stall before it is retried"),
        Knob("WHISPER_RELEASE_INDEX_URL", _http_url, None, "https://pypi.org/simple",
             "the package index (PEP 503 simple API) to fetch from; wins over PIP_INDEX_URL"),
        Knob("PIP_INDEX_URL", _http_url, None, "https://pypi.org/simple",
             "the package index, as pip reads it, when WHISPER_RELEASE_INDEX_URL is unset"),
        Knob("WHISPER_RELEASE_CACHE", _directory, None, "~/.cache/whisper-release",
             "the fetch cache (default $XDG_CACHE_HOME/whisper-release)"),
        Knob("XDG_CACHE_HOME", _directory, None, "~/.cache", "the base of the default cache directory"),
        Knob("WHISPER_RELEASE_ASSETS", _existing_directory, None, "/path/to/assets",
             "mel_filters.npz and the tokenizers for `convert` (default: fetched and verified)"),
        Knob("WHISPER_RELEASE_ROOT", _project_root, None, "/path/to/whisper-release",
             "the repository root (default: found from the installed package)"),
        Knob("WHISPER_RELEASE_STORE", _directory, None, "/path/to/.store",
             "the embedded S3 store's folder (default .store/ in the repository root)"),
        Knob("MINIO_SECURE", _switch, True, "false",
             "whether a MinIO-style host:port endpoint uses https"),
        Knob("WHISPER_RELEASE_CPU_LOCK", _file_path, Path("/tmp/whisper-cpu.lock"), "/tmp/whisper-cpu.lock",
             "the lock file benchmarks hold so that nothing else times the CPU meanwhile"),
        Knob("BENCH_THREADS", _integer(1, 256), 2, "2", "threads each benchmarked engine uses"),
        Knob("WHISPER_RELEASE_CPU_MODULE", _variant_name, None, "haswell",
             "force this CPU module of an artifact with several (runtime/modules.py), e.g. the floor"),
        Knob("WHISPER_RELEASE_BENCH_GATE", _number(0.0, 1000.0, lo_open=True), None, "15",
             "fail a benchmark run on a median regression above this many percent"),
    )
}


def get(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The knob's parsed value, its default when unset or empty, or one ConfigError."""
    knob = KNOBS[name]
    raw = (os.environ if env is None else env).get(name)
    if raw is None or raw.strip() == "":
        return knob.default
    try:
        return knob.parse(raw)
    except _Invalid as e:
        raise ConfigError(
            f"The environment variable {name}={redact_url(raw)!r} is not valid: expected {e}; set it to "
            f"e.g. {knob.example} or unset it."
        ) from None


def check_all(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every knob parsed at once (the first bad one raises): for entry points that want to fail early."""
    return {name: get(name, env) for name in KNOBS}
