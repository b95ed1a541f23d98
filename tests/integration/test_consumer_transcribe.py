"""The consumer's whole path with the real build: publish to the embedded store, pull into a fresh
folder, transcribe jfk.wav with the console script in every format, and refuse bad input cleanly.

Needs the built artifacts (`invoke build`: dist/release_artifacts, or $WHISPER_RELEASE_ARTIFACTS)
and the pinned source's samples/jfk.wav (from the fetch cache, or $WHISPER_RELEASE_JFK).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_release.consume import consumer
from whisper_release.core.errors import ConfigError, CpuError, ToolError, VerificationError
from whisper_release.core.pins import load_pins, project_root
from whisper_release.publish import push as publish
from whisper_release.s3.store import EmbeddedStore
from whisper_release.testing import require_tool, unavailable

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).with_name("whisper-release"))


def _need(what: str) -> None:
    unavailable(f"{what} is missing", "; CI builds it first")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("WHISPER_RELEASE_ARTIFACTS", project_root() / "dist" / "release_artifacts"))
    if not (root / "manifest.json").is_file():
        _need(f"the built release in {root} (run `invoke build`)")
    return root


@pytest.fixture(scope="module")
def model(artifacts) -> str:
    models = sorted(p.name[len("whisper_") : -len("_xeon")] for p in artifacts.glob("whisper_*_xeon"))
    return "base" if "base" in models else models[0]


@pytest.fixture(scope="module")
def jfk() -> Path:
    env = os.environ.get("WHISPER_RELEASE_JFK")
    if env:
        return Path(env)
    from whisper_release.inputs.fetch import fetch_source

    pins = load_pins()
    src = fetch_source(pins, pins.profile("offline").source)
    return src / pins.sample.path


@pytest.fixture(scope="module")
def reference() -> str:
    return load_pins().sample.reference


@pytest.fixture(scope="module")
def store_env(artifacts, tmp_path_factory):
    """The build published as release e2e-r1 to a fresh embedded store; the console's environment."""
    store = EmbeddedStore(tmp_path_factory.mktemp("store"), bucket="consumer-e2e", prefix="whisper.cpp")
    cfg = store.start()
    try:
        publish.push(artifacts, cfg, version="e2e-r1", create_bucket=True, progress=False)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_"))
        }
        env.update(cfg.client_env(), WHISPER_RELEASE_BUCKET=cfg.bucket, WHISPER_RELEASE_PREFIX=cfg.prefix)
        yield env
    finally:
        store.stop()


@pytest.fixture(scope="module")
def pulled(artifacts, model, store_env, tmp_path_factory) -> Path:
    """The release pulled into a fresh folder with the console script."""
    dest = tmp_path_factory.mktemp("fresh") / f"whisper_{model}_xeon"
    proc = subprocess.run(
        [EXE, "pull", "--release", "latest", "--model", model, "--dest", str(dest)],
        env=store_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest)
    src = artifacts / f"whisper_{model}_xeon"
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {p.name: p.read_bytes() for p in src.iterdir()}
    return dest


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return float(jiwer.wer(norm(reference), norm(hypothesis)))


def _transcribe(audio: Path, artifact: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [EXE, "transcribe", str(audio), "--artifact", str(artifact), "--threads", "2", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _text_of(fmt: str, out: str) -> str:
    """The transcript inside each format, checking the format's own structure on the way."""
    if fmt == "txt":
        return out
    if fmt == "json":
        doc = json.loads(out)
        assert doc["segments"] and all(0 <= s["start"] <= s["end"] <= 12 for s in doc["segments"])
        assert " ".join(s["text"] for s in doc["segments"]) == doc["text"]
        return str(doc["text"])
    sep = "," if fmt == "srt" else r"\."
    ts = rf"\d\d:\d\d:\d\d{sep}\d\d\d"
    lines = out.splitlines()
    if fmt == "vtt":
        assert lines[0] == "WEBVTT" and lines[1] == ""
        lines = lines[2:]
    cues = [b.splitlines() for b in "\n".join(lines).split("\n\n") if b.strip()]
    assert cues
    text = []
    for n, cue in enumerate(cues, start=1):
        if fmt == "srt":
            assert cue[0] == str(n)
            cue = cue[1:]
        assert re.fullmatch(rf"{ts} --> {ts}", cue[0]), cue[0]
        text += cue[1:]
    return " ".join(text)


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [
        ("txt", ()),
        ("json", ()),
        ("srt", ()),
        ("vtt", ()),
        # The encoder window fitted to the clip (750 frames for jfk's 11 s instead of 1500).
        ("txt", ("--audio-ctx", "auto")),
    ],
    ids=["txt", "json", "srt", "vtt", "txt-audio-ctx-auto"],
)
def test_pulled_release_transcribes_jfk_exactly(pulled, jfk, reference, fmt, extra, tmp_path):
    out = tmp_path / f"jfk.{fmt}"
    proc = _transcribe(jfk, pulled, "--format", fmt, "--output", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    assert wer(reference, _text_of(fmt, out.read_text(encoding="utf-8"))) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left


def test_audio_ctx_beyond_the_models_window_is_refused_before_decoding(pulled):
    from whisper_release.runtime import binding

    art = consumer.open_artifact(pulled)
    with binding.load(art.path, required_flags=[]).open(art.model_file) as ctx:
        n_audio_ctx = ctx.hparams()["n_audio_ctx"]
        wanted = rf"0 \(full window\) to {n_audio_ctx} encoder frames, got {n_audio_ctx + 1}\."
        with pytest.raises(ConfigError, match=wanted):
            ctx.transcribe(np.zeros(16000, dtype=np.float32), audio_ctx=n_audio_ctx + 1)


def _stereo_44k(src: Path, dst: Path) -> None:
    """jfk.wav as 44.1 kHz 16-bit stereo, by plain linear interpolation (independent of audio.py),
    with different levels per channel so a channel mix-up would show."""
    with wave.open(str(src)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    n_out = int(round(x.size * 44100 / 16000))
    y = np.interp(np.arange(n_out) * (16000 / 44100), np.arange(x.size), x)
    stereo = np.stack([y, 0.6 * y], axis=1).round().clip(-32768, 32767).astype("<i2")
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.tobytes())


def test_stereo_44k1_wav_is_resampled_and_still_exact(pulled, jfk, reference, tmp_path):
    wav = tmp_path / "jfk-44k1-stereo.wav"
    _stereo_44k(jfk, wav)
    samples = consumer.decode_audio(wav)
    assert samples.dtype == np.float32 and abs(samples.size - 176000) <= 2
    proc = _transcribe(wav, pulled)
    assert proc.returncode == 0, proc.stderr
    assert wer(reference, proc.stdout) == 0.0


def test_compressed_audio_goes_through_ffmpeg(pulled, jfk, reference, tmp_path):
    ffmpeg = require_tool("ffmpeg", "non-WAV audio")
    flac = tmp_path / "jfk.flac"
    subprocess.run([ffmpeg, "-v", "error", "-i", str(jfk), "-ar", "22050", str(flac)], check=True)
    proc = _transcribe(flac, pulled, "--format", "txt")
    assert proc.returncode == 0, proc.stderr
    assert wer(reference, proc.stdout) == 0.0


def _one_sentence_error(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    # Commands are echoed ("+ ffmpeg ...") before they run, by house rule; the rest is one sentence.
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("+ ")]
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_audio_inputs_are_refused_in_one_sentence(pulled, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    _one_sentence_error(_transcribe(empty, pulled), VerificationError.exit_code, "is empty")
    _one_sentence_error(
        _transcribe(tmp_path / "nope.wav", pulled), VerificationError.exit_code, "does not exist"
    )
    _one_sentence_error(_transcribe(tmp_path, pulled), VerificationError.exit_code, "is a directory")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    _one_sentence_error(_transcribe(truncated, pulled), VerificationError.exit_code, str(truncated))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "truncated.wav"]


def test_garbage_file_is_refused_through_ffmpeg(pulled, tmp_path):
    require_tool("ffmpeg", "non-WAV audio")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(os.urandom(5000))
    _one_sentence_error(
        _transcribe(junk, pulled), VerificationError.exit_code, "could not be decoded by ffmpeg"
    )


def test_non_wav_without_ffmpeg_says_what_to_install(pulled, jfk, tmp_path):
    fake = tmp_path / "jfk.ogg"
    fake.write_bytes(b"OggS" + jfk.read_bytes()[4:])
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # the venv only: no ffmpeg
    assert shutil.which("ffmpeg", path=env["PATH"]) is None
    _one_sentence_error(_transcribe(fake, pulled, env=env), ToolError.exit_code, "ffmpeg is not installed")


def test_unknown_format_and_bad_numbers(pulled, jfk):
    _one_sentence_error(
        _transcribe(jfk, pulled, "--format", "docx"), ConfigError.exit_code, "txt, json, srt, vtt"
    )
    _one_sentence_error(_transcribe(jfk, pulled, "--beam", "0"), ConfigError.exit_code, "--beam")


def test_cpu_without_avx2_is_refused_before_loading(pulled, jfk, tmp_path, monkeypatch):
    host = Path("/proc/cpuinfo").read_text()
    old = re.sub(r"\b(avx2|fma|bmi2)\b", "", host)
    fake = tmp_path / "cpuinfo"
    fake.write_text(old)
    monkeypatch.setattr(consumer, "CPUINFO", fake)
    with pytest.raises(CpuError, match="lacks avx2, fma, bmi2"):
        consumer.transcribe(jfk, pulled)


def test_tampered_artifact_is_refused_before_loading(pulled, jfk, tmp_path):
    copy = tmp_path / pulled.name
    shutil.copytree(pulled, copy)
    model = next(copy.glob("ggml-*.bin"))
    with open(model, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 16)
    _one_sentence_error(
        _transcribe(jfk, copy), VerificationError.exit_code, model.name, "pull the artifact again"
    )


# ---- docs/examples/worker.py ---------------------------------------------------------------

WORKER = project_root() / "docs" / "examples" / "worker.py"


def _worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args, "--threads", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_worker_pulls_once_and_transcribes_a_folder_idempotently(store_env, model, jfk, reference, tmp_path):
    inbox, outbox, cache = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "cache"
    (inbox / "sub").mkdir(parents=True)
    shutil.copy(jfk, inbox / "a.wav")
    _stereo_44k(jfk, inbox / "sub" / "b.wav")
    (inbox / "broken.wav").write_bytes(b"")
    args = (str(inbox), "--outbox", str(outbox), "--cache", str(cache), "--model", model)

    first = _worker(store_env, *args)
    assert first.returncode == 1, first.stderr  # broken.wav failed, the others did not
    assert "release e2e-r1 pulled" in first.stderr and "broken.wav" in first.stderr
    outs = sorted(p.relative_to(outbox).as_posix() for p in outbox.rglob("*") if p.is_file())
    assert outs == ["a.txt", "sub/b.txt"]
    for p in outbox.rglob("*.txt"):
        assert wer(reference, p.read_text()) == 0.0
    assert [p.relative_to(cache).as_posix() for p in cache.iterdir()] == ["e2e-r1"]
    stamps = {p: p.stat().st_mtime_ns for p in outbox.rglob("*.txt")}

    # Nothing new: nothing is redone, and the bucket is not even needed.
    (inbox / "broken.wav").unlink()
    no_s3 = {k: v for k, v in store_env.items() if not k.startswith(("AWS_", "WHISPER_RELEASE_"))}
    no_s3["WHISPER_RELEASE_STORE"] = str(tmp_path / "no-store")
    again = _worker(no_s3, *args)
    assert again.returncode == 0, again.stderr
    assert "0 to transcribe, 2 already done" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in outbox.rglob("*.txt")} == stamps

    # A new file: the cached release is reused, not pulled again; srt output this time.
    shutil.copy(jfk, inbox / "c.wav")
    third = _worker(store_env, *args, "--format", "srt")
    assert third.returncode == 0, third.stderr
    assert "release e2e-r1 cached" in third.stderr
    assert "3 transcribed" in third.stderr  # srt transcripts are a different output set
    assert wer(reference, _text_of("srt", (outbox / "c.srt").read_text())) == 0.0

    # The bucket unreachable (nothing listens on that port): the newest cached release still serves.
    shutil.copy(jfk, inbox / "d.wav")
    dead = dict(store_env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    offline = _worker(dead, *args)
    assert offline.returncode == 0, offline.stderr
    assert "bucket unreachable" in offline.stderr and "using cached" in offline.stderr
    assert wer(reference, (outbox / "d.txt").read_text()) == 0.0
