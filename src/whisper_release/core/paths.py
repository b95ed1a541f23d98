"""Where the project's own folders are: the checkout holding release.toml, else the working directory.

Kept apart from pins so that the consumer side (which has no release.toml) can find its defaults
without reading any pin.
"""

from __future__ import annotations

from pathlib import Path

from whisper_release.core import settings


def project_root() -> Path:
    """The repository root: $WHISPER_RELEASE_ROOT, else the folder holding release.toml above here."""
    env: Path | None = settings.get("WHISPER_RELEASE_ROOT")
    if env is not None:
        return env
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "release.toml").is_file():
            return parent
    return Path.cwd().resolve()


def cache_root() -> Path:
    """The cache folder: $WHISPER_RELEASE_CACHE, else $XDG_CACHE_HOME/whisper-release (the fetch
    cache's items and blobs, and the runtime's CPU module self-test verdicts)."""
    env: Path | None = settings.get("WHISPER_RELEASE_CACHE")
    if env is not None:
        return env
    xdg: Path | None = settings.get("XDG_CACHE_HOME")
    return ((xdg or Path.home() / ".cache") / "whisper-release").resolve()
