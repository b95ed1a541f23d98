"""Streaming downloads that are checked before they are trusted.

A download goes to a temp file beside its destination, is retried with exponential backoff on
connection errors, timeouts and 5xx answers (resumed with a Range request when the server honours
it, else restarted), then checked for size and hash, then renamed. A file that fails a check is
deleted: nothing a later run could trust is ever left behind.

Tuning (environment): WHISPER_RELEASE_RETRIES (default 5), WHISPER_RELEASE_BACKOFF (seconds,
default 1; the n-th retry waits backoff * 2**n), WHISPER_RELEASE_TIMEOUT (seconds, default 60).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError, FetchError, VerificationError
from whisper_release.core.redact import redact_text, redact_url

PROGRESS_MIN_BYTES = 4 * 1024 * 1024
CHUNK = 1 << 20
USER_AGENT = "whisper-release (+release tooling)"

# Every HTTP request the tool makes goes through _get: tests read this to prove a warm cache
# does no network I/O at all.
request_count = 0


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            settings.get("WHISPER_RELEASE_RETRIES"),
            settings.get("WHISPER_RELEASE_BACKOFF"),
            settings.get("WHISPER_RELEASE_TIMEOUT"),
        )


class _Retryable(Exception):
    pass


_RETRYABLE = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    _Retryable,
)

_session: requests.Session | None = None


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = requests.Session()
        # Bytes are stored and hashed exactly as served: no transparent decompression.
        _session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return _session


def _get(url: str, policy: RetryPolicy, headers: dict[str, str] | None = None) -> requests.Response:
    global request_count
    request_count += 1
    try:
        r = session().get(
            url, stream=True, timeout=policy.timeout, headers=headers or {}, allow_redirects=True
        )
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as e:
        # requests quotes the unparsable part, which for a password holding '/' is half the secret.
        raise ConfigError(
            f"{redact_url(url)} is not a URL that can be fetched ({type(e).__name__}); check the index or "
            "mirror URL, and percent-encode any '/', '@' or ':' inside its user name or password."
        ) from None
    if r.status_code >= 500 or r.status_code in (408, 429):
        r.close()
        raise _Retryable(f"HTTP {r.status_code}")
    return r


def _describe(e: BaseException) -> str:
    first = e.args[0] if e.args else None
    # requests' own texts may quote the URL, userinfo included.
    text = redact_text(first if isinstance(first, str) else (str(e) or type(e).__name__))
    return text if len(text) < 160 else text[:157] + "..."


def _with_retries(url: str, what: str, policy: RetryPolicy, attempt_fn: Callable[[], object]) -> None:
    shown = redact_url(url)
    for attempt in range(policy.retries + 1):
        try:
            attempt_fn()
            return
        except _RETRYABLE as e:
            if attempt == policy.retries:
                raise FetchError(
                    f"Could not download {what} from {shown} after {policy.retries + 1} attempts "
                    f"(last error: {_describe(e)}); check the network or the index/mirror URL and rerun."
                ) from None
            wait = policy.backoff * (2**attempt)
            print(f"  {what}: {_describe(e)}; retrying in {wait:g} s", file=sys.stderr, flush=True)
            time.sleep(wait)


def get_text(url: str, *, what: str, policy: RetryPolicy | None = None) -> str:
    """A small text resource (an index page), with the same retries as a download."""
    policy = policy or RetryPolicy.from_env()
    shown = redact_url(url)
    out: list[str] = []

    def attempt() -> None:
        with _get(url, policy) as r:
            if r.status_code == 404:
                raise FetchError(
                    f"{what} is not at {shown} (HTTP 404); check the name in release.toml and the index URL."
                )
            if r.status_code >= 400:
                raise FetchError(
                    f"{shown} answered HTTP {r.status_code} for {what}; check the index URL and access."
                )
            out.append(r.content.decode(r.encoding or "utf-8", errors="replace"))

    _with_retries(url, what, policy, attempt)
    return out[0]


def _hashes(path: Path, algos: list[str]) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def download(
    url: str,
    dest: Path,
    *,
    what: str,
    size: int | None = None,
    sha256: str | None = None,
    sha1: str | None = None,
    check: Callable[[Path], None] | None = None,
    policy: RetryPolicy | None = None,
    verified_later: bool = False,
) -> Path:
    """Download `url` to `dest` (atomically) and verify it against the pins given.

    Only a caller that verifies the content itself afterwards (a source tarball, pinned by the
    tree hash of what it holds) may pass no hash, and must say so with `verified_later`.

    `check(tmp_path)` runs after the hashes matched and before the rename; if it raises, the file
    is deleted. Raises FetchError (network) or VerificationError (content) with one sentence.
    """
    if not (sha256 or sha1 or verified_later):
        raise ValueError("download needs a pinned hash")
    policy = policy or RetryPolicy.from_env()
    shown = redact_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{time.monotonic_ns()}.part"
    try:
        _with_retries(url, what, policy, lambda: _attempt(url, tmp, what, size, policy))
        got_size = tmp.stat().st_size
        if size is not None and got_size != size:
            kind = "truncated" if got_size < size else "too long"
            raise VerificationError(
                f"Download of {what} from {shown} is {kind}: {got_size} bytes, release.toml pins {size}; "
                f"the file was deleted, rerun (or check the mirror if it repeats)."
            )
        algos = [a for a, v in (("sha256", sha256), ("sha1", sha1)) if v]
        got = _hashes(tmp, algos)
        for algo, want in (("sha256", sha256), ("sha1", sha1)):
            if want and got[algo] != want.lower():
                raise VerificationError(
                    f"Download of {what} from {shown} has {algo} {got[algo]}, but release.toml pins {want}; "
                    f"the file was deleted: check the pin and the mirror before rerunning."
                )
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _attempt(url: str, tmp: Path, what: str, size: int | None, policy: RetryPolicy) -> None:
    shown = redact_url(url)
    have = tmp.stat().st_size if tmp.exists() else 0
    if size is not None and have >= size:
        have = 0  # a complete or over-long part cannot be resumed: start over
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _get(url, policy, headers) as r:
        if r.status_code >= 400:
            raise FetchError(
                f"{shown} answered HTTP {r.status_code} for {what}; check the URL in release.toml "
                f"(or the mirror) and rerun."
            )
        resumed = (
            have > 0
            and r.status_code == 206
            and r.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        )
        if not resumed:
            have = 0
        length = r.headers.get("Content-Length")
        total = size if size is not None else (have + int(length) if length and length.isdigit() else None)
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=what,
            file=sys.stderr,
            leave=False,
            disable=None if (total or 0) >= PROGRESS_MIN_BYTES else True,
            mininterval=0.5,
        )
        written = have
        try:
            with open(tmp, "ab" if resumed else "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if size is not None and written > size:
                        break  # more than pinned: stop reading, the size check names it
        finally:
            bar.close()
