"""The consumer side: `whisper-release pull` and `whisper-release transcribe`.

What a transcription worker does with a published release: pull one artifact directory
(pull.py), then load its library through the ctypes binding and transcribe audio files,
writing txt, json, srt or vtt (formats.py). cli.py owns the command line; this module does no
I/O at import time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_release.core.console import info, quote
from whisper_release.core.errors import ConfigError, ReleaseError, ToolError, VerificationError
from whisper_release.layout import artifacts as layout
from whisper_release.runtime import formats

SAMPLE_RATE = 16_000
LIBRARY = "libwhisper.so"
# RIFF/WAVE and its 64-bit variants are read natively; everything else goes through ffmpeg.
_WAV_MAGICS = (b"RIFF", b"RIFX", b"RF64", b"BW64")


class AudioError(VerificationError):
    """An audio file is unreadable, empty or in a format that cannot be decoded here (the same
    class audio.py raises for a broken WAV, so one exit code means "bad audio")."""


# ---- audio --------------------------------------------------------------------------------


def _is_wav(head: bytes) -> bool:
    return head[:4] in _WAV_MAGICS and head[8:12] == b"WAVE"


def decode_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """The file as float32 samples at 16 kHz mono.

    WAV is read natively (any rate, any channel count, resampled by audio.py); other formats
    go through ffmpeg when it is installed.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        raise AudioError(f"Audio file {p} does not exist; check the path.") from None
    except IsADirectoryError:
        raise AudioError(f"Audio path {p} is a directory, expected an audio file.") from None
    except OSError as e:
        raise AudioError(f"Audio file {p} cannot be read ({e.strerror}); check its permissions.") from None
    if not head:
        raise AudioError(
            f"Audio file {p} is empty (0 bytes); give a WAV or other audio file with sound in it."
        )
    if not _is_wav(head):
        samples = _decode_ffmpeg(p)
    else:
        try:
            samples = _decode_wav(p)
        except ReleaseError as wav_error:
            # Python's wave module reads integer PCM only; ffmpeg, when present, also reads float
            # and compressed WAV. If it fails too, the WAV reader's message says more.
            from whisper_release.runtime.audio import SampleRateError

            if shutil.which("ffmpeg") is None or isinstance(wav_error, SampleRateError):
                raise
            try:
                samples = _decode_ffmpeg(p)
            except ReleaseError:
                raise wav_error from None
    if samples.size == 0:
        raise AudioError(f"Audio file {p} holds no samples; give a recording that is not empty.")
    return samples


def _decode_wav(path: Path) -> np.ndarray:
    from whisper_release.runtime import audio

    try:
        return np.ascontiguousarray(audio.read_wav(path), dtype=np.float32)
    except ReleaseError:
        raise
    except (ValueError, EOFError, OSError) as e:
        raise AudioError(
            f"Audio file {path} is not a readable WAV file ({e}); re-export it as PCM WAV."
        ) from None


def _decode_ffmpeg(path: Path) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ToolError(
            f"Audio file {path} is not WAV and ffmpeg is not installed to decode it; install ffmpeg "
            "(apt-get install ffmpeg) or convert the file to WAV."
        )
    cmd = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-i",
        # The file protocol, always: a file named `-` would otherwise be stdin, and `concat:x` or
        # `http://...` another protocol.
        "file:" + str(path),
        "-map",
        "0:a:0",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    info(f"+ {quote(cmd)}")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise AudioError(
            f"Audio file {path} could not be decoded by ffmpeg ({why}); check it is an audio file."
        )
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


# ---- the artifact -------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A pulled `whisper_<model>_xeon` directory: its artifact.json, the library and one model file."""

    path: Path
    model_file: Path
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def model(self) -> str:
        return self.model_file.name.removeprefix("ggml-").removesuffix(".bin")


def open_artifact(
    path: str | os.PathLike[str], *, quant: str | None = None, verify: bool = True
) -> Artifact:
    """Check the directory is an artifact (its artifact.json) holding the library and its models
    (and, with `verify`, that every file matches SHA256SUMS); pick the model file of type `quant`,
    by default the primary one artifact.json names."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(
            f"Artifact directory {d} does not exist; pull one first (whisper-release pull --release "
            "latest --model base --dest DIR)."
        )
    if not (d / LIBRARY).is_file():
        raise ConfigError(
            f"{d} has no {LIBRARY}, so it is not a whisper_<model>_xeon artifact directory; pull one."
        )
    try:
        meta = layout.load_metadata(d)
    except layout.LayoutError as e:
        raise VerificationError(str(e)) from None
    model = choose_model(d, meta, quant)
    if verify:
        sums_path = d / layout.SUMS
        if not sums_path.is_file():
            raise VerificationError(
                f"{d} has no {layout.SUMS}, so its files cannot be verified; pull the artifact again."
            )
        try:
            sums = layout.parse_sha256sums(sums_path.read_text(encoding="utf-8", errors="replace"))
        except layout.LayoutError as e:
            raise VerificationError(f"{sums_path}: {e}; pull the artifact again.") from None
        require_listed(d, sums, model)
        bad = sorted(
            n for n, digest in sums.items() if not (d / n).is_file() or layout.sha256_file(d / n) != digest
        )
        if bad:
            raise VerificationError(
                f"{d}: {', '.join(bad)} missing or not matching {layout.SUMS}; pull the artifact again."
            )
    return Artifact(d, model, meta)


def loaded_files(d: Path, model: Path) -> list[str]:
    """What a transcription reads from `d`: the model, and every shared library there (libwhisper
    finds its ggml libraries and libgomp through its $ORIGIN rpath, so any .so beside it may load)."""
    libs = {p.name for p in d.iterdir() if p.is_file() and (p.name.endswith(".so") or ".so." in p.name)}
    return sorted(libs | {model.name, LIBRARY})


def require_listed(d: Path, sums: dict[str, str], model: Path) -> None:
    """Refuse an artifact whose SHA256SUMS leaves out a file that would be loaded: checking only
    the listed files would let an added or unlisted library or model through unverified."""
    unlisted = [n for n in loaded_files(d, model) if n not in sums]
    if unlisted:
        raise VerificationError(
            f"{d}: {', '.join(unlisted)} would be loaded but {'is' if len(unlisted) == 1 else 'are'} not "
            f"listed in {layout.SUMS}, so {'it' if len(unlisted) == 1 else 'they'} cannot be verified; "
            "remove what you added, or pull the artifact again."
        )


def quant_of(model_file: Path) -> str:
    """ggml-base-q8_0.bin -> q8_0."""
    return model_file.stem.rsplit("-", 1)[-1]


def choose_model(d: Path, meta: Mapping[str, Any], quant: str | None) -> Path:
    """The model file of type `quant`; without one, the primary that artifact.json names."""
    by_quant = {str(f["type"]): d / str(f["name"]) for f in meta["model_files"]}
    if quant is None:
        name = layout.primary_model_file(meta)
    elif quant in by_quant:
        name = by_quant[quant].name
    else:
        raise ConfigError(
            f"{d} has no {quant} model ({layout.METADATA} lists {', '.join(sorted(by_quant))}): "
            "choose one of those with --quant."
        )
    if not (d / name).is_file():
        raise VerificationError(
            f"{d / name} is missing although {layout.METADATA} lists it; pull the artifact again."
        )
    return d / name


def artifact_cpu_flags(artifact: Artifact) -> list[str]:
    """The CPU flags the artifact needs, as its artifact.json states them (a pulled release may come
    from other pins than any checkout's)."""
    return [str(f) for f in artifact.meta["required_cpu_flags"]]


AUDIO_CTX_AUTO = "auto"
_MAX_AUDIO_CTX = 1500  # every Whisper model's n_audio_ctx (30 s); the binding checks the model's own


def audio_ctx_setting(value: str | int | None) -> str | int:
    """`--audio-ctx` as given: 'auto' (binding.fitted_audio_ctx per file), or encoder frames
    (0: the library default, the full 30 s window)."""
    if value is None:
        return 0
    text = str(value).strip().lower()
    if text == AUDIO_CTX_AUTO:
        return AUDIO_CTX_AUTO
    if re.fullmatch(r"[0-9]{1,4}", text) and int(text) <= _MAX_AUDIO_CTX:
        return int(text)
    raise ConfigError(
        f"--audio-ctx must be auto, 0 (the library default, the full 30 s window) or a number of encoder "
        f"frames up to {_MAX_AUDIO_CTX} (50 per second of audio), got {value!r}."
    )


# Module-level so tests can point the CPU check at a recorded cpuinfo of an older CPU.
CPUINFO: Path = Path("/proc/cpuinfo")


class Transcriber:
    """One loaded library and model, reused for many files (what a worker keeps around).

    The CPU flags are checked before the library is loaded, so an unsuitable server gets a
    CpuError instead of dying of an illegal instruction. Use as a context manager, or `close()`.
    """

    def __init__(
        self,
        artifact: str | os.PathLike[str],
        *,
        threads: int | None = None,
        beam: int | None = None,
        language: str = "en",
        verify: bool = True,
        audio_ctx: str | int | None = None,
        quant: str | None = None,
    ) -> None:
        from whisper_release.runtime import binding

        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}.")
        if beam is not None and beam < 1:
            raise ConfigError(f"--beam must be at least 1, got {beam}.")
        self.audio_ctx = audio_ctx_setting(audio_ctx)
        art = open_artifact(artifact, quant=quant, verify=verify)
        self.artifact = art
        self.whisper = binding.load(art.path, required_flags=artifact_cpu_flags(art), cpuinfo=CPUINFO)
        self._ctx: Any = None  # the model is read on first use, after the audio has been decoded
        self.threads = threads or min(os.cpu_count() or 1, 8)
        self.beam = beam
        self.language = language

    @property
    def ctx(self) -> Any:
        if self._ctx is None:
            self._ctx = self.whisper.open(self.artifact.model_file)
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def audio_ctx_for(self, samples: np.ndarray) -> int:
        if self.audio_ctx == AUDIO_CTX_AUTO:
            from whisper_release.runtime.binding import fitted_audio_ctx

            return fitted_audio_ctx(int(samples.size))
        return int(self.audio_ctx)

    def segments(self, samples: np.ndarray) -> list[Any]:
        return list(
            self.ctx.transcribe(
                samples,
                threads=self.threads,
                beam=self.beam,
                language=self.language,
                audio_ctx=self.audio_ctx_for(samples),
            )
        )

    def transcribe_file(self, audio_path: str | os.PathLike[str], fmt: str = "txt") -> str:
        if fmt not in formats.FORMATS:
            formats.render([], fmt)  # raises the one-sentence ConfigError
        samples = decode_audio(audio_path)
        segs = self.segments(samples)
        return formats.render(
            segs,
            fmt,
            audio=Path(audio_path).name,
            model=self.artifact.model,
            duration=round(samples.size / SAMPLE_RATE, 3),
        )


def _create_exclusive(directory: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file of a random name, opened O_EXCL with mode 0666 so that the kernel applies the umask."""
    for _ in range(100):
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to a temp file beside `path`, then rename: readers never see half a file.

    The file gets 0666 less the umask, like any file the user's tools create (mkstemp's 0600 would
    hide it from a group; a fixed 0644 would show it to everyone despite a umask of 027)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_exclusive(out.parent, f".{out.name}.", ".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def transcribe(
    audio_path: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    *,
    threads: int | None = None,
    beam: int | None = None,
    fmt: str = "txt",
    output: str | os.PathLike[str] | None = None,
    language: str = "en",
    audio_ctx: str | int | None = None,
    quant: str | None = None,
) -> str:
    """Transcribe one file; returns the rendered text and writes it to `output` when given."""
    if fmt not in formats.FORMATS:
        formats.render([], fmt)
    with Transcriber(
        artifact, threads=threads, beam=beam, language=language, audio_ctx=audio_ctx, quant=quant
    ) as t:
        text = t.transcribe_file(audio_path, fmt)
    if output is not None:
        write_atomic(output, text)
    return text


# ---- command line -------------------------------------------------------------------------


def remote_from_env() -> Any:
    """The configured store (environment or $WHISPER_RELEASE_S3_CONFIG), else the embedded one if it
    is running; pulling never starts a store, since an empty new one has nothing to pull."""
    from whisper_release.consume.pull import remote_from_config
    from whisper_release.s3.config import load_config
    from whisper_release.s3.store import EmbeddedStore

    config = load_config()
    if config is None:
        store = EmbeddedStore()
        if not store.status().running:
            raise ConfigError(
                "No S3 store is configured and the embedded one is not running: set AWS_ENDPOINT_URL, "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (bucket and prefix default to release.toml's "
                "[publish]), or start the embedded store with `invoke store --start`."
            )
        config = store.config()
    return remote_from_config(config)


def print_listing(remote: Any, out: Any = sys.stdout, *, as_json: bool = False) -> None:
    """One line per release (version, publication time, models), or with `as_json` a JSON list of
    {version, published, models, complete, latest} for scripts; which one is latest goes to stderr."""
    from whisper_release.consume.pull import (
        LATEST_KEY,
        list_releases,
        load_manifest,
        manifest_digests,
        models_in,
        read_latest,
    )

    listing = list_releases(remote)
    latest = read_latest(remote) if listing.complete else None
    if as_json:
        rows = [
            {
                "version": r.version,
                "published": r.published.isoformat(),
                "models": models_in(manifest_digests(load_manifest(remote, r.version))),
                "complete": True,
                "latest": latest is not None and r.version == latest.version,
            }
            for r in listing.complete
        ]
        rows += [
            {"version": v, "published": None, "models": [], "complete": False, "latest": False}
            for v in listing.incomplete
        ]
        print(json.dumps(rows, indent=2), file=out)
        return
    for r in listing.complete:
        models = models_in(manifest_digests(load_manifest(remote, r.version)))
        print(f"{r.version}\t{r.published.isoformat()}\t{' '.join(models)}", file=out)
    for v in listing.incomplete:
        print(f"{v}\t(incomplete: no manifest yet)\t", file=out)
    if not listing.complete and not listing.incomplete:
        info(f"no releases in {remote.where()}")
        return
    pointer = remote.where(LATEST_KEY)
    info(f"latest: {latest.version} ({pointer})" if latest else f"latest: none ({pointer} is missing)")


def pull_command(
    release: str = "latest",
    model: str | None = None,
    dest: str | None = None,
    *,
    list_only: bool = False,
    as_json: bool = False,
    force: bool = False,
    progress: bool = True,
    dry_run: bool = False,
) -> None:
    """What `whisper-release pull` and `invoke pull` do: list, or pull and print the directory."""
    from whisper_release.consume.pull import pull

    remote = remote_from_env()
    if list_only:
        print_listing(remote, as_json=as_json)
        return
    if not model:
        raise ConfigError("pull needs --model (e.g. --model base); --list shows the models of each release.")
    res = pull(remote, release, model, dest, force=force, progress=progress, dry_run=dry_run)
    print(res.dest)
