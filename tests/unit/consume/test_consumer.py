"""Consumer pieces that need no library and no server: audio input checks, artifact checks,
the CPU flags an artifact states, atomic writes and the command line's refusals."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_release import cli
from whisper_release.consume import consumer
from whisper_release.core.errors import ConfigError, ToolError, VerificationError
from whisper_release.layout import artifacts
from whisper_release.testing import require_tool


def _wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def test_wav_is_decoded_to_16k_mono_float32(tmp_path):
    t = np.arange(48000) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    x = consumer.decode_audio(_wav(tmp_path / "a.wav", stereo, 48000, channels=2))
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - 16000) <= 1
    # 440 Hz survives resampling: the spectrum peaks there.
    spec = np.abs(np.fft.rfft(x[2000:14000]))
    assert abs(np.argmax(spec) * 16000 / 12000 - 440) < 3


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "does not exist"),
    ],
)
def test_unusable_paths_are_one_sentence_audio_errors(tmp_path, make, needle):
    p = tmp_path / "in.wav"
    make(p)
    with pytest.raises(consumer.AudioError, match=needle) as e:
        consumer.decode_audio(p)
    assert isinstance(e.value, VerificationError)
    assert str(p) in str(e.value)


def test_wav_with_no_frames_is_refused(tmp_path):
    p = _wav(tmp_path / "silent.wav", np.zeros(0), 16000)
    with pytest.raises(VerificationError, match="no samples"):
        consumer.decode_audio(p)


def test_non_wav_without_ffmpeg_names_the_fix(tmp_path, monkeypatch):
    p = tmp_path / "a.mp3"
    p.write_bytes(b"ID3" + os.urandom(100))
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(ToolError, match="ffmpeg is not installed.*convert the file to WAV"):
        consumer.decode_audio(p)


def test_ffmpeg_decodes_float_wav_that_the_wave_module_cannot(tmp_path):
    require_tool("ffmpeg", "float WAV decoding")
    src = _wav(tmp_path / "src.wav", 0.3 * np.sin(np.arange(16000) / 5), 16000)
    flt = tmp_path / "float.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-c:a", "pcm_f32le", str(flt)], check=True)
    x = consumer.decode_audio(flt)
    assert x.size == 16000 and 0.29 < float(np.abs(x).max()) < 0.31


FLAGS = ["avx", "avx2", "fma", "sse4_2"]


def _meta(types: tuple[str, ...] = ("q5_1",), primary: str = "q5_1") -> dict:
    """artifact.json of a fake artifact: the fields the consumer reads (shape-checked as in a real one)."""
    return {
        "schema": artifacts.METADATA_SCHEMA,
        "release_version": "1.8.5-r1",
        "whisper_cpp": {"version": "1.8.5", "commit": "c" * 40, "tree": "t" * 40},
        "model": {"name": "base", "hparams": {}},
        "model_files": [
            {"name": f"ggml-base-{q}.bin", "type": q, "primary": q == primary} for q in types
        ],
        "required_cpu_flags": FLAGS,
        "min_glibc": "2.34",
        "min_glibcxx": "",
        "libraries": [{"name": lib} for lib in artifacts.LIBRARIES],
    }


def _artifact(tmp_path: Path, meta: dict | None = None) -> Path:
    d = tmp_path / "whisper_base_xeon"
    d.mkdir()
    (d / "libwhisper.so").write_bytes(b"\x7fELF lib")
    (d / "ggml-base-q5_1.bin").write_bytes(b"model")
    (d / "artifact.json").write_text(json.dumps(meta or _meta()))
    _sums(d)
    return d


def _sums(d: Path) -> None:
    (d / "SHA256SUMS").unlink(missing_ok=True)
    (d / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(d.iterdir()))
    )


def test_open_artifact_verifies_against_sha256sums(tmp_path):
    d = _artifact(tmp_path)
    art = consumer.open_artifact(d)
    assert art.model == "base-q5_1" and art.model_file.name == "ggml-base-q5_1.bin"
    (d / "ggml-base-q5_1.bin").write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="ggml-base-q5_1.bin missing or not matching SHA256SUMS"):
        consumer.open_artifact(d)
    assert consumer.open_artifact(d, verify=False).path == d


def test_open_artifact_refuses_what_is_not_an_artifact(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; pull one first"):
        consumer.open_artifact(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no libwhisper.so"):
        consumer.open_artifact(tmp_path)
    d = _artifact(tmp_path)
    (d / "artifact.json").unlink()
    with pytest.raises(VerificationError, match="has no artifact.json, so it is not a whisper-release"):
        consumer.open_artifact(d, verify=False)
    (d / "artifact.json").write_text(json.dumps(_meta(("q5_1", "q8_0"), primary="none")))
    with pytest.raises(VerificationError, match=r"artifact.json: field 'model_files\[\].primary'"):
        consumer.open_artifact(d, verify=False)
    (d / "artifact.json").write_text(json.dumps(_meta(("q8_0",), primary="q8_0")))
    with pytest.raises(VerificationError, match="q8_0.bin is missing although artifact.json lists it"):
        consumer.open_artifact(d, verify=False)


def test_artifact_json_names_the_primary_model_and_quant_picks_another(tmp_path):
    d = _artifact(tmp_path, _meta(("q8_0", "q5_1"), primary="q5_1"))
    (d / "ggml-base-q8_0.bin").write_bytes(b"faster model")
    _sums(d)
    assert consumer.open_artifact(d).model_file.name == "ggml-base-q5_1.bin"
    assert consumer.open_artifact(d, quant="q8_0").model == "base-q8_0"
    with pytest.raises(ConfigError, match=r"has no q4_0 model \(artifact.json lists q5_1, q8_0\)"):
        consumer.open_artifact(d, quant="q4_0", verify=False)
    # The README's prose plays no part: a README naming another type changes nothing.
    (d / "README.md").write_text("# whisper.cpp 1.8.5, model `base` (q8_0, q5_1), for x86-64 Xeon servers\n")
    assert consumer.open_artifact(d, verify=False).model_file.name == "ggml-base-q5_1.bin"


def test_cpu_flags_come_from_artifact_json_not_the_pins(tmp_path):
    d = _artifact(tmp_path)
    assert consumer.artifact_cpu_flags(consumer.open_artifact(d)) == FLAGS
    meta = _meta()
    meta["required_cpu_flags"] = ["avx512f"]
    (d / "artifact.json").write_text(json.dumps(meta))
    _sums(d)
    assert consumer.artifact_cpu_flags(consumer.open_artifact(d)) == ["avx512f"]


def test_write_atomic_replaces_whole_files_only(tmp_path):
    out = tmp_path / "sub" / "a.srt"
    consumer.write_atomic(out, "one")
    consumer.write_atomic(out, "two")
    assert out.read_text() == "two"
    assert [p.name for p in out.parent.iterdir()] == ["a.srt"]


def test_cli_refusals_are_one_sentence_and_typed(tmp_path, capsys):
    d = _artifact(tmp_path)
    wav = _wav(tmp_path / "a.wav", np.zeros(1600), 16000)
    assert (
        cli.main(["transcribe", str(wav), "--artifact", str(d), "--format", "docx"]) == ConfigError.exit_code
    )
    assert capsys.readouterr().err.strip() == (
        "error: Unknown output format 'docx': expected one of txt, json, srt, vtt."
    )
    assert cli.main(["transcribe", str(wav), "--artifact", str(tmp_path / "x")]) == ConfigError.exit_code
    assert "pull one first" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["fast", "-1", "1501", "", "7.5", "\uff12", "auto750"])
def test_cli_refuses_a_bad_audio_ctx_in_one_sentence(tmp_path, capsys, value):
    d = _artifact(tmp_path)
    wav = _wav(tmp_path / "a.wav", np.zeros(1600), 16000)
    assert cli.main(["transcribe", str(wav), "--artifact", str(d), "--audio-ctx", value]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --audio-ctx must be auto, 0 (the library default, the full 30 s window) or a number of "
        f"encoder frames up to 1500 (50 per second of audio), got {value!r}."
    )


@pytest.mark.parametrize(
    ("value", "setting"),
    [(None, 0), ("0", 0), ("auto", "auto"), (" Auto ", "auto"), ("750", 750), (1500, 1500)],
)
def test_audio_ctx_setting_accepts_auto_and_frame_counts(value, setting):
    assert consumer.audio_ctx_setting(value) == setting


def test_cli_good_audio_ctx_gets_past_the_check_to_the_library(tmp_path, capsys, monkeypatch):
    # The fake artifact's library cannot load: reaching that error proves the value was accepted.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: " + " ".join(FLAGS) + "\n")
    monkeypatch.setattr(consumer, "CPUINFO", cpuinfo)  # whatever CPU runs the tests
    d = _artifact(tmp_path)
    wav = _wav(tmp_path / "a.wav", np.zeros(1600), 16000)
    for value in ("auto", "0", "1500"):
        code = cli.main(["transcribe", str(wav), "--artifact", str(d), "--audio-ctx", value])
        err = capsys.readouterr().err
        assert code == VerificationError.exit_code and "Cannot load" in err, err
