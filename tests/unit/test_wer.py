"""wer: normalisation, corpus-level WER, and espeak-ng clip synthesis with its cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import project_root
from whisper_release.runtime import audio
from whisper_release.testing import require_tool
from whisper_release.verify import wer


def test_normaliser_removes_punctuation_case_and_spelling_variants() -> None:
    assert wer.normalize("And so, my fellow Americans: ask NOT!") == "and so my fellow americans ask not"
    assert wer.normalize("Mr. Smith") == wer.normalize("mister smith")


def test_corpus_wer_counts_edits_over_all_reference_words() -> None:
    refs = ["The cat sat on the mat.", "Hello world"]
    hyps = ["the cat sat on a mat", "hello there world"]
    r = wer.corpus_wer(refs, hyps)
    # 1 substitution + 1 insertion over 8 reference words (not the mean of 1/6 and 1/2).
    assert (r.substitutions, r.deletions, r.insertions, r.reference_words) == (1, 0, 1, 8)
    assert r.wer == pytest.approx(2 / 8)
    assert wer.corpus_wer(refs, refs).wer == 0.0


def test_corpus_wer_rejects_bad_input() -> None:
    with pytest.raises(VerificationError, match="one hypothesis per reference"):
        wer.corpus_wer(["a"], [])
    with pytest.raises(VerificationError, match="empty after normalisation"):
        wer.corpus_wer([", ; !"], ["x"])
    assert wer.corpus_wer(["red green"], [""]).deletions == 2


def test_committed_clip_list_is_big_enough() -> None:
    texts = wer.load_texts(project_root() / "verify" / "clips.txt")
    assert len(texts) >= 10
    assert len(set(texts)) == len(texts)
    assert all(len(t.split()) >= 6 for t in texts)


def test_load_texts_errors(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="does not exist"):
        wer.load_texts(tmp_path / "nope.txt")
    (tmp_path / "c.txt").write_text("# only a comment\n\n")
    with pytest.raises(VerificationError, match="holds no sentences"):
        wer.load_texts(tmp_path / "c.txt")


def test_synthesis_makes_16k_speech_and_caches_it(tmp_path: Path) -> None:
    require_tool("espeak-ng", "synthesises the WER clips")
    text = "Please remember to close the windows."
    us = wer.synthesize(text, "en-us", tmp_path)
    gb = wer.synthesize(text, "en-gb", tmp_path)
    assert us != gb  # the voice is part of the key
    x = audio.read_wav(us)
    assert 1.0 < len(x) / audio.SAMPLE_RATE < 6.0  # a short sentence, at 16 kHz
    assert float(np.abs(x).max()) > 0.05  # real sound, not silence
    mtime = us.stat().st_mtime_ns
    assert wer.synthesize(text, "en-us", tmp_path) == us
    assert us.stat().st_mtime_ns == mtime  # served from the cache, not made again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([us.name, gb.name])  # no temp left


def test_clips_alternate_voices(tmp_path: Path) -> None:
    require_tool("espeak-ng", "synthesises the WER clips")
    clips = wer.synthesized_clips(["one small step", "a giant leap", "for all of us"], cache_dir=tmp_path)
    assert [c.voice for c in clips] == ["en-us", "en-gb", "en-us"]
    assert len({c.path for c in clips}) == 3
