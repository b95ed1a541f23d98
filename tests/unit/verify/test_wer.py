"""wer: normalisation, corpus-level WER, espeak-ng clip synthesis with its cache, the bootstrap
intervals and the paired gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import load_pins, project_root
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


# ---- bootstrap intervals and the paired gate ------------------------------------------------------

utterances = st.lists(
    st.integers(1, 40).flatmap(lambda w: st.tuples(st.integers(0, 2 * w), st.just(w))),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(utterances, st.integers(0, 2**32 - 1))
def test_wer_interval_is_ordered_bounded_by_the_utterance_rates_and_reproducible(rows, seed) -> None:
    edits, words = [e for e, _ in rows], [w for _, w in rows]
    lo, hi = wer.wer_interval(edits, words, resamples=500, seed=seed)
    rates = [e / w for e, w in rows]
    # A corpus WER is a word-weighted mean of the utterance rates, so every resample lies between them.
    assert min(rates) - 1e-12 <= lo <= hi <= max(rates) + 1e-12
    assert wer.wer_interval(edits, words, resamples=500, seed=seed) == (lo, hi)


def test_wer_interval_of_equal_rates_is_a_point_and_widens_with_spread() -> None:
    assert wer.wer_interval([1, 2, 3], [10, 20, 30], resamples=1000, seed=1) == pytest.approx((0.1, 0.1))
    lo, hi = wer.wer_interval([0] * 10 + [10] * 10, [10] * 20, resamples=2000, seed=1)
    assert 0.2 < lo < 0.5 < hi < 0.8  # half the utterances all wrong: wide around 50%
    with pytest.raises(VerificationError, match="needs utterances and resamples"):
        wer.wer_interval([], [], resamples=10, seed=0)


@settings(max_examples=60, deadline=None)
@given(utterances, st.data())
def test_paired_interval_brackets_every_per_utterance_difference(rows, data) -> None:
    words = [w for _, w in rows]
    a = [e for e, _ in rows]
    b = [data.draw(st.integers(0, 2 * w)) for w in words]
    lo, hi = wer.paired_difference_interval(a, b, words, resamples=400, seed=7)
    diffs = [(y - x) / w for x, y, w in zip(a, b, words, strict=True)]
    assert min(diffs) - 1e-12 <= lo <= hi <= max(diffs) + 1e-12
    # Same file on both sides: exactly no difference, whatever the draws.
    assert wer.paired_difference_interval(a, a, words, resamples=400, seed=7) == (0.0, 0.0)


def _clips(n: int, words: int = 10) -> list[wer.Clip]:
    vocab = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return [wer.Clip(f"u{i:02d}", Path(f"/x/u{i}.wav"), " ".join(vocab[(i + k) % 12] for k in range(words)))
            for i in range(n)]  # fmt: skip


def _garble(text: str, k: int) -> str:
    """`text` with its first k words replaced: exactly k substitutions."""
    ws = text.split()
    return " ".join(["zulu"] * k + ws[k:])


def test_paired_gate_forgives_a_few_changed_words_the_bare_difference_did_not() -> None:
    # 18 utterances of 10 words: 180 words, as verify's old synthetic set. The quantized file gets
    # two words wrong in one utterance: +1.11 pp, which the old bare-difference rule (> 1.0 pp)
    # failed; the paired interval includes 0 (resamples without that utterance), so the gate passes.
    clips = _clips(18)
    f16 = {c.name: c.reference for c in clips}
    q = {**f16, "u03": _garble(f16["u03"], 2)}
    g = wer.paired_gate("synthetic", clips, f16, q, 1.0, resamples=2000, seed=20240101)
    assert g.delta_pp == pytest.approx(100 * 2 / 180)
    assert g.delta_pp > 1.0 and g.low_pp <= 0.0 < g.high_pp
    assert g.gated and not g.failed


def test_paired_gate_fails_a_file_worse_on_most_utterances_and_changes_are_named() -> None:
    clips = _clips(12)
    f16 = {c.name: c.reference for c in clips}
    q = {c.name: _garble(c.reference, 1 if i % 4 else 0) for i, c in enumerate(clips)}  # 9 of 12 worse
    g = wer.paired_gate("real", clips, f16, q, 1.0, resamples=2000, seed=3)
    assert g.delta_pp == pytest.approx(100 * 9 / 120) and g.low_pp > 1.0 and g.failed
    changed = wer.changed_utterances({"real": clips}, f16, q)
    assert [c["name"] for c in changed] == [c.name for i, c in enumerate(clips) if i % 4]
    assert all(c["f16_edits"] == 0 and c["quantized_edits"] == 1 and c["words_changed"] for c in changed)


def test_small_sets_are_reported_but_not_gated_the_pooled_set_always_is() -> None:
    clips = _clips(1)
    f16 = {"u00": clips[0].reference}
    q = {"u00": _garble(clips[0].reference, 3)}
    g = wer.paired_gate("jfk", clips, f16, q, 1.0, resamples=500, seed=1)
    # One utterance: every resample is that utterance, so the interval is the point (30 pp).
    assert (g.low_pp, g.high_pp) == pytest.approx((30.0, 30.0))
    assert not g.gated and not g.failed
    pooled = wer.paired_gate(wer.POOLED, clips, f16, q, 1.0, resamples=500, seed=1)
    assert pooled.gated and pooled.failed


def test_changed_utterances_tell_punctuation_from_words() -> None:
    clips = _clips(2)
    f16 = {c.name: c.reference for c in clips}
    q = {"u00": clips[0].reference.capitalize() + ".", "u01": clips[1].reference}
    (c,) = wer.changed_utterances({"synthetic": clips}, f16, q)
    assert (c["set"], c["name"], c["words_changed"], c["quantized_edits"]) == ("synthetic", "u00", False, 0)


def test_score_set_and_settings() -> None:
    clips = _clips(4)
    hyp = {c.name: _garble(c.reference, i) for i, c in enumerate(clips)}
    r = wer.score_set("real", clips, hyp, resamples=1000, seed=5)
    assert (r.n, r.words, r.edits) == (4, 40, (0, 1, 2, 3)) and r.wer == pytest.approx(6 / 40)
    assert r.low <= r.wer <= r.high
    with pytest.raises(VerificationError, match="No transcript for u03"):
        wer.score_set("real", clips, {c.name: "" for c in clips[:3]}, resamples=10, seed=0)
    assert wer.bootstrap_settings({"bootstrap_resamples": 10000, "bootstrap_seed": 1}) == (10000, 1)
    with pytest.raises(ConfigError, match=r"needs bootstrap_resamples .* got None and None"):
        wer.bootstrap_settings({})


def test_release_pins_ceilings_for_every_set_and_model_and_the_bootstrap() -> None:
    pins = load_pins()
    resamples, seed = wer.bootstrap_settings(pins.verify)
    assert resamples >= 1000
    ceilings = pins.verify.wer_ceiling
    assert set(ceilings) == set(wer.SETS)
    for s in wer.SETS:
        assert set(ceilings[s]) == set(pins.model_names), s
        assert all(0 < float(v) < 1 for v in ceilings[s].values())
