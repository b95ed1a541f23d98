"""Word error rate over three sets: real human speech ([speech]), English clips synthesised with
espeak-ng (verify/clips.txt), and jfk.wav; each with a bootstrap confidence interval.

Both sides go through Whisper's English text normaliser (PyPI whisper-normalizer) before jiwer
counts words, so punctuation, casing and spelling variants ("mr"/"mister") are not errors.
The WER is corpus-level: total edits over total reference words, not a mean of per-clip rates.

Uncertainty (docs/verify.md): the interval is a percentile bootstrap over utterances (resample
the utterances with replacement, recompute the corpus WER), seeded so a run is reproducible. A
quantized file is compared with f16 on the same utterances: the paired bootstrap resamples
utterance indices once and takes the WER difference on each resample, so what the two files
share (hard clips, easy clips) cancels out.
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

import numpy as np

from whisper_release.core.console import run, which
from whisper_release.core.errors import ConfigError, ToolError, VerificationError
from whisper_release.inputs.cache import cache_root
from whisper_release.inputs.fetch import fetch_speech
from whisper_release.inputs.speech import clip_paths
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


# ---- the sets ------------------------------------------------------------------------------------

SETS = ("real", "synthetic", "jfk")
POOLED = "all"  # every utterance of every set
CONFIDENCE = 0.95
# The paired gate judges a set only when it has at least this many utterances: below that a
# bootstrap has too few distinct resamples to say anything (one utterance: none at all).
MIN_GATED_UTTERANCES = 5


def real_speech_clips(set_dir: str | os.PathLike[str], speech: Any) -> list[Clip]:
    """The pinned real-speech clips ([speech], a core.pins.SpeechPins) in a verified set directory."""
    return [Clip(c.name, p, c.reference) for c, p in clip_paths(Path(set_dir), speech)]


def wer_sets(
    sample_wav: str | os.PathLike[str],
    sample_reference: str,
    clips_file: str | os.PathLike[str],
    real: Sequence[Clip],
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, list[Clip]]:
    """The three WER sets, in SETS order: real speech, synthesised clips, jfk.wav."""
    if not real:
        raise VerificationError(
            "The real-speech WER set is empty; release.toml [speech] must pin at least one clip."
        )
    return {
        "real": list(real),
        "synthetic": synthesized_clips(load_texts(clips_file), cache_dir=cache_dir),
        "jfk": [Clip(Path(sample_wav).stem, Path(sample_wav), sample_reference)],
    }


def pinned_wer_sets(
    pins: Any, source_dir: str | os.PathLike[str], clips_file: str | os.PathLike[str]
) -> dict[str, list[Clip]]:
    """The three sets from the pins: [speech] fetched and verified, jfk.wav from the verified source tree."""
    real = real_speech_clips(fetch_speech(pins), pins.speech)
    return wer_sets(Path(source_dir) / pins.sample.path, pins.sample.reference, clips_file, real)


def all_clips(sets: dict[str, list[Clip]]) -> list[Clip]:
    """Every utterance of every set, once, in set order (what one transcription run covers)."""
    return [c for name in sets for c in sets[name]]


# ---- per-utterance scores and the bootstrap ---------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """Per-utterance edit counts (substitutions + deletions + insertions) and reference word counts."""

    names: tuple[str, ...]
    edits: tuple[int, ...]
    words: tuple[int, ...]

    @property
    def wer(self) -> float:
        return sum(self.edits) / sum(self.words)


def utterance_scores(clips: Sequence[Clip], transcripts: dict[str, str]) -> Scores:
    """Each clip's edits and reference words against its transcript (normalised, as corpus_wer)."""
    missing = [c.name for c in clips if c.name not in transcripts]
    if missing:
        raise VerificationError(
            f"No transcript for {', '.join(missing)} (wanted one per clip of the set); "
            f"rerun the transcription."
        )
    edits, words = [], []
    for c in clips:
        r = corpus_wer([c.reference], [transcripts[c.name]])
        edits.append(r.substitutions + r.deletions + r.insertions)
        words.append(r.reference_words)
    return Scores(tuple(c.name for c in clips), tuple(edits), tuple(words))


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` draws of n utterance indices with replacement; the same (n, resamples, seed) always
    gives the same draws, so two files scored on one set are resampled identically (paired)."""
    if n < 1 or resamples < 1:
        raise VerificationError(
            f"A bootstrap needs utterances and resamples, got n={n}, resamples={resamples}."
        )
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def wer_interval(
    edits: Sequence[int], words: Sequence[int], *, resamples: int, seed: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus WER over utterances."""
    e, w = np.asarray(edits, np.int64), np.asarray(words, np.int64)
    idx = bootstrap_indices(len(e), resamples, seed)
    return _quantiles(e[idx].sum(axis=1) / w[idx].sum(axis=1), confidence)


def paired_difference_interval(
    edits_a: Sequence[int],
    edits_b: Sequence[int],
    words: Sequence[int],
    *,
    resamples: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of WER(b) - WER(a) on the same utterances (one set of draws
    for both, so the difference is taken utterance by utterance)."""
    a, b, w = (np.asarray(x, np.int64) for x in (edits_a, edits_b, words))
    if not len(a) == len(b) == len(w):
        raise VerificationError(
            f"A paired comparison needs the same utterances on both sides, got {len(a)} and {len(b)} scores "
            f"for {len(w)} references."
        )
    idx = bootstrap_indices(len(w), resamples, seed)
    return _quantiles((b[idx].sum(axis=1) - a[idx].sum(axis=1)) / w[idx].sum(axis=1), confidence)


@dataclass(frozen=True)
class SetResult:
    """One file's WER on one set, with its interval (fractions, not percent)."""

    set: str
    n: int
    words: int
    wer: float
    low: float
    high: float
    edits: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_utterances": self.n, "reference_words": self.words, "wer": self.wer,
            "ci95": [self.low, self.high], "edits": list(self.edits),
        }  # fmt: skip


def score_set(
    name: str, clips: Sequence[Clip], transcripts: dict[str, str], *, resamples: int, seed: int
) -> SetResult:
    s = utterance_scores(clips, transcripts)
    lo, hi = wer_interval(s.edits, s.words, resamples=resamples, seed=seed)
    return SetResult(name, len(clips), sum(s.words), s.wer, lo, hi, s.edits)


@dataclass(frozen=True)
class PairedGate:
    """A quantized file against f16 on one set: WER difference (percentage points) with its paired
    bootstrap interval. It fails only when the whole interval's lower bound is above the allowed
    delta, i.e. when the data show the file worse by more than the delta, not merely unlucky."""

    set: str
    n: int
    delta_pp: float
    low_pp: float
    high_pp: float
    max_delta_pp: float

    @property
    def gated(self) -> bool:
        return self.set == POOLED or self.n >= MIN_GATED_UTTERANCES

    @property
    def failed(self) -> bool:
        return self.gated and self.low_pp > self.max_delta_pp

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_utterances": self.n, "delta_pp": self.delta_pp, "ci95_pp": [self.low_pp, self.high_pp],
            "max_delta_pp": self.max_delta_pp, "gated": self.gated, "failed": self.failed,
        }  # fmt: skip


def paired_gate(
    name: str,
    clips: Sequence[Clip],
    f16: dict[str, str],
    quantized: dict[str, str],
    max_delta_pp: float,
    *,
    resamples: int,
    seed: int,
) -> PairedGate:
    a, b = utterance_scores(clips, f16), utterance_scores(clips, quantized)
    lo, hi = paired_difference_interval(a.edits, b.edits, a.words, resamples=resamples, seed=seed)
    delta = (sum(b.edits) - sum(a.edits)) / sum(a.words)
    # Rounded to 1e-9 pp: float noise in the quantiles must not turn an equal bound into a failure.
    return PairedGate(
        name, len(clips), round(100 * delta, 9), round(100 * lo, 9), round(100 * hi, 9), max_delta_pp
    )


def changed_utterances(
    sets: dict[str, list[Clip]], f16: dict[str, str], quantized: dict[str, str]
) -> list[dict[str, Any]]:
    """Every utterance whose transcript differs between f16 and the quantized file (raw text,
    whitespace-trimmed), with both texts and whether the difference survives normalisation."""
    out = []
    for set_name, clips in sets.items():
        for c in clips:
            a, b = f16.get(c.name, "").strip(), quantized.get(c.name, "").strip()
            if a == b:
                continue
            ea = utterance_scores([c], {c.name: a})
            eb = utterance_scores([c], {c.name: b})
            out.append({
                "set": set_name, "name": c.name, "reference": c.reference, "f16": a, "quantized": b,
                "f16_edits": ea.edits[0], "quantized_edits": eb.edits[0],
                "words_changed": normalize(a) != normalize(b),
            })  # fmt: skip
    return out


def bootstrap_settings(verify_pins: Any) -> tuple[int, int]:
    """(resamples, seed) from release.toml [verify] (core.pins.VerifyPins, or its table as a dict)."""
    get = verify_pins.get if isinstance(verify_pins, dict) else (lambda k: getattr(verify_pins, k, None))
    resamples, seed = get("bootstrap_resamples"), get("bootstrap_seed")
    if not (isinstance(resamples, int) and resamples >= 100 and isinstance(seed, int) and seed >= 0):
        raise ConfigError(
            f"release.toml [verify] needs bootstrap_resamples (an integer >= 100) and bootstrap_seed (an "
            f"integer >= 0), got {resamples!r} and {seed!r}; restore them from git."
        )
    return resamples, seed


def interval_text(low: float, high: float, pp: bool = False) -> str:
    if pp:
        return f"[{low:+.1f}, {high:+.1f}]"
    return f"[{100 * low:.1f}, {100 * high:.1f}]"
