"""The real-speech input ([speech]): pins loader, raw -> WAV, and fetch against a loopback index.

A real HTTP server on 127.0.0.1 serves a PEP 503 page and a toy sdist holding one WAV and one
headerless clip; the pinned [speech] table of release.toml is checked against the real sdist in
the cache only when that sdist is already there (it is fetched by `invoke fetch`).
"""

from __future__ import annotations

import hashlib
import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from test_fetch_support import (  # noqa: F401  (fixture)
    cache_files,
    dead_port_url,
    http_server,
    make_pins,
    tar_gz,
)

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import load_pins
from whisper_release.inputs import download, fetch, speech
from whisper_release.runtime import audio


def _samples(seconds: float = 0.5, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 3000).astype("<i2").tobytes()


def _wav(samples: bytes, rate: int = 16000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


def test_raw_becomes_the_canonical_44_byte_wav(tmp_path: Path) -> None:
    raw = _samples()
    got = speech.s16le_to_wav(raw)
    # The RIFF header written field by field, independently of the wave module.
    want = (
        b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", len(raw)) + raw
    )  # fmt: skip
    assert got == want
    assert speech.s16le_to_wav(raw) == got  # deterministic: the sha256 can be pinned
    (tmp_path / "x.wav").write_bytes(got)
    np.testing.assert_allclose(
        audio.read_wav(tmp_path / "x.wav"), np.frombuffer(raw, "<i2") / 32768.0, atol=1e-6
    )
    with pytest.raises(VerificationError, match="even number of bytes, got 3"):
        speech.s16le_to_wav(b"abc")


def _toy(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes] | None = None):  # noqa: F811
    raw = _samples(0.7, seed=1)
    wav = _wav(_samples(0.4, seed=2))
    members = members or {"toy-1/data/a.wav": wav, "toy-1/data/b.raw": raw}
    sdist = tar_gz({k: (v, 0o644) for k, v in members.items()})
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", server.add_simple_index("toy", {"toy-1.tar.gz": sdist}))
    table = {
        "package": "toy", "version": "1", "filename": "toy-1.tar.gz", "size": len(sdist),
        "sha256": hashlib.sha256(sdist).hexdigest(), "license": "MIT", "origin": "made by the test",
        "clips": [
            {"name": "a", "member": "toy-1/data/a.wav", "reference": "one two", "origin": "clip a",
             "sha256": hashlib.sha256(wav).hexdigest()},
            {"name": "b", "member": "toy-1/data/b.raw", "format": "s16le-16k-mono", "reference": "three",
             "sha256": hashlib.sha256(speech.s16le_to_wav(raw)).hexdigest(), "origin": "clip b"},
        ],
    }  # fmt: skip
    return table, wav, raw


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("WHISPER_RELEASE_CACHE", str(d))
    monkeypatch.setenv("WHISPER_RELEASE_RETRIES", "0")
    return d


def test_fetch_extracts_and_reuses_offline(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    table, wav, raw = _toy(http_server, tmp_path, monkeypatch)
    pins = make_pins(tmp_path, lambda r: r.update(speech=table))
    d = fetch.fetch_speech(pins)
    assert (d / "a.wav").read_bytes() == wav
    assert (d / "b.wav").read_bytes() == speech.s16le_to_wav(raw)
    sp = pins.speech
    assert sp is not None and [c.origin for c in sp.clips] == ["clip a", "clip b"]
    assert [(c.name, p) for c, p in speech.clip_paths(d, sp)] == [("a", d / "a.wav"), ("b", d / "b.wav")]

    # Warm: the index is a dead port; the set comes from the cache, re-hashed, with no request.
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", dead_port_url() + "/simple")
    before = download.request_count
    assert fetch.fetch_speech(pins) == d
    assert download.request_count == before

    # A damaged clip in the cache is noticed and the set is extracted again (from the cached sdist).
    (d / "b.wav").write_bytes(b"RIFF")
    assert fetch.fetch_speech(pins) == d and (d / "b.wav").read_bytes() == speech.s16le_to_wav(raw)


def test_fetch_profile_reports_the_speech_set(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    table, _, _ = _toy(http_server, tmp_path, monkeypatch)
    pins = make_pins(
        tmp_path,
        lambda r: (
            r.update(speech=table),
            r["profiles"].update(bare={"source": "github", "models": [], "debian": "mirror"}),
        ),
    )
    dry = fetch.fetch_profile(pins.profile("bare"), pins, dry_run=True)
    assert {r.item: r.status for r in dry.records}["speech set (toy 1, 2 clips)"] == "would extract"
    assert cache_files(cache_dir) == []
    f = fetch._Fetcher(pins)
    path = f.speech()
    assert path is not None and {r.item: r.status for r in f.records} == {
        "toy 1": "downloaded",
        "speech set (toy 1, 2 clips)": "extracted",
    }


def test_wrong_clip_pin_leaves_no_set(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    table, _, _ = _toy(http_server, tmp_path, monkeypatch)
    table["clips"][1]["sha256"] = "0" * 64
    pins = make_pins(tmp_path, lambda r: r.update(speech=table))
    with pytest.raises(
        VerificationError,
        match=r"Speech clip b \(toy-1/data/b.raw in toy-1.tar.gz\) has sha256 [0-9a-f]{64}, but release.toml "
        r"\[\[speech.clips\]\] pins 0{64}; nothing was cached",
    ):
        fetch.fetch_speech(pins)
    # The pinned sdist itself is a good input and may stay; no speech item, no half-made one.
    assert [f for f in cache_files(cache_dir) if not f.startswith("blobs/")] == []


def test_missing_member_and_bad_format(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    table, _, _ = _toy(http_server, tmp_path, monkeypatch)
    table["clips"][0]["member"] = "toy-1/data/nope.wav"
    with pytest.raises(
        VerificationError, match=r"toy-1.tar.gz \(toy 1\) has no regular file 'toy-1/data/nope.wav'"
    ):
        fetch.fetch_speech(make_pins(tmp_path, lambda r: r.update(speech=table)))

    stereo = _wav(_samples(0.2), channels=2)
    table2, _, _ = _toy(
        http_server, tmp_path, monkeypatch, {"toy-1/data/a.wav": stereo, "toy-1/data/b.raw": b"\0\0"}
    )
    table2["clips"][0]["sha256"] = hashlib.sha256(stereo).hexdigest()
    table2["clips"][1]["sha256"] = hashlib.sha256(speech.s16le_to_wav(b"\0\0")).hexdigest()
    with pytest.raises(
        VerificationError,
        match=r"Speech clip a .* is not a non-empty 16 kHz mono 16-bit WAV: got "
        r"channels, bytes per sample, rate = \(2, 2, 16000\)",
    ):
        fetch.fetch_speech(make_pins(tmp_path, lambda r: r.update(speech=table2)))
    assert [f for f in cache_files(cache_dir) if not f.startswith("blobs/")] == []


def test_speech_pins_loader_refuses_a_malformed_table(tmp_path: Path) -> None:
    good = load_pins().raw["speech"]

    def pins_with(table: dict) -> object:
        return make_pins(tmp_path, lambda r: r.update(speech=table))

    assert make_pins(tmp_path, lambda r: r.pop("speech")).speech is None
    with pytest.raises(ConfigError, match=r"\[speech\] lacks the key package"):
        pins_with({k: v for k, v in good.items() if k != "package"})
    bad = [{**good["clips"][0], "sha256": "ABC"}]
    with pytest.raises(ConfigError, match=r"sha256 must be a lowercase hex sha256, found 'ABC'"):
        pins_with({**good, "clips": bad})
    with pytest.raises(ConfigError, match="format must be one of wav, s16le-16k-mono, found 'mp3'"):
        pins_with({**good, "clips": [{**good["clips"][0], "format": "mp3"}]})
    sp = pins_with({**good, "clips": [good["clips"][0], good["clips"][0]]}).speech  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="each name once, got librivox-0870, librivox-0870"):
        speech.check_speech_pins(sp)
    with pytest.raises(ConfigError, match="has no \\[speech\\] table"):
        fetch.fetch_speech(make_pins(tmp_path, lambda r: r.pop("speech")))


def test_release_pins_the_pocketsphinx_recordings() -> None:
    """release.toml's [speech]: the sdist FACTS.md names, 11 clips with references and licence (the
    clip hashes themselves are proven against the real sdist in tests/integration/test_fetch_offline.py)."""
    sp = load_pins().speech
    assert sp is not None
    assert (sp.package, sp.version, sp.sha256) == (
        "pocketsphinx", "5.1.1", "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
    )  # fmt: skip
    assert "Carnegie Mellon" in sp.license and "public domain" in sp.license
    assert [c.name.split("-")[0] for c in sp.clips].count("librivox") == 5
    assert [c.name.split("-")[0] for c in sp.clips].count("cards") == 5
    assert {c.format for c in sp.clips} == {"wav", "s16le-16k-mono"}
