"""Word error rate over the sample set: jfk.wav plus English clips synthesised with espeak-ng.

Both sides go through Whisper's English text normaliser (PyPI whisper-normalizer) before jiwer
counts words, so punctuation, casing and spelling variants ("mr"/"mister") are not errors.
The WER is corpus-level: total edits over total reference words, not a mean of per-clip rates.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from whisper_release.core.console import run, which
from whisper_release.core.errors import ToolError, VerificationError
from whisper_release.inputs.cache import cache_root
from whisper_release.runtime import audio

VOICES = ("en-us", "en-gb")
# Words per minute; espeak-ng's default. Part of the cache key, as is its version.
ESPEAK_SPEED = 160
CLIPS_FORMAT = "1"  # bump when the way clips are made changes, so old cache entries are not reused


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    reference: str
    voice: str | None = None  # None: a recording, not synthesised


@dataclass(frozen=True)
class WerResult:
    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "wer": self.wer,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "reference_words": self.reference_words,
        }


@lru_cache(maxsize=1)
def _normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer  # the verify extra only

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> WerResult:
    """Corpus-level WER of normalised hypotheses against normalised references."""
    import jiwer  # the verify extra only (constraints/wer.txt pins it)

    if len(references) != len(hypotheses):
        raise VerificationError(
            f"WER needs one hypothesis per reference: got {len(references)} references, "
            f"{len(hypotheses)} hypotheses."
        )
    if not references:
        raise VerificationError("WER needs at least one reference text, got none.")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    for raw, norm in zip(references, refs, strict=True):
        if not norm:
            raise VerificationError(
                f"Reference text {raw!r} is empty after normalisation; give it real words."
            )
    out = jiwer.process_words(refs, hyps)
    n_ref = out.hits + out.substitutions + out.deletions
    return WerResult(out.wer, out.substitutions, out.deletions, out.insertions, out.hits, n_ref)


def load_texts(path: str | os.PathLike[str]) -> list[str]:
    """Sentences of a clips list: one per line; blank lines and '#' comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise VerificationError(
            f"Clip list {path} does not exist; it is committed as verify/clips.txt."
        ) from None
    texts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not texts:
        raise VerificationError(
            f"Clip list {path} holds no sentences; add at least one line of English text."
        )
    return texts


@lru_cache(maxsize=1)
def espeak_version() -> str:
    exe = which("espeak-ng", "Install it with scripts/install-system-deps.sh (Debian package espeak-ng).")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"eSpeak NG text-to-speech:\s*(\S+)", out)
    if not m:
        raise ToolError(
            f"Cannot read the espeak-ng version from `espeak-ng --version` (got {out.strip()[:80]!r})."
        )
    return m.group(1)


def default_cache_dir() -> Path:

    return cache_root() / "clips"


def clip_key(text: str, voice: str) -> str:
    material = "\0".join(
        [CLIPS_FORMAT, espeak_version(), voice, str(ESPEAK_SPEED), str(audio.SAMPLE_RATE), text]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def synthesize(text: str, voice: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A 16 kHz mono WAV of `text` spoken by espeak-ng's `voice`, made once and cached by content."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{clip_key(text, voice)}.wav"
    if final.is_file():
        return final
    exe = which("espeak-ng", "Install it with scripts/install-system-deps.sh (Debian package espeak-ng).")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".synth-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text + "\n", encoding="utf-8")
        raw = Path(tmp) / "espeak.wav"
        run(
            [exe, "-v", voice, "-s", str(ESPEAK_SPEED), "-f", str(text_file), "-w", str(raw)],
            capture=True,
            echo=False,
        )
        # espeak-ng writes 22050 Hz; whisper wants 16 kHz, so resample band-limited.
        audio.write_wav(final, audio.read_wav(raw))
    return final


def synthesized_clips(
    texts: Sequence[str], voices: Sequence[str] = VOICES, cache_dir: str | os.PathLike[str] | None = None
) -> list[Clip]:
    """One clip per sentence, the voices taking turns so each speaks about half of the set."""
    clips = []
    for i, text in enumerate(texts):
        voice = voices[i % len(voices)]
        clips.append(Clip(f"tts{i + 1:02d}-{voice}", synthesize(text, voice, cache_dir), text, voice))
    return clips


def sample_set(
    sample_wav: str | os.PathLike[str],
    sample_reference: str,
    clips_file: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Clip]:
    """The WER set: the pinned recording (jfk.wav) first, then the synthesised clips."""
    recording = Clip(Path(sample_wav).stem, Path(sample_wav), sample_reference)
    return [recording, *synthesized_clips(load_texts(clips_file), cache_dir=cache_dir)]
