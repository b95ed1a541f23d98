"""integrity: a small model written here (f16, and q5_1 with ggml's encoder), then corrupted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from whisper_release.core.pins import ModelPin
from whisper_release.verify import integrity
from whisper_release.weights import ggml, quants

HP = {
    "n_vocab": 96,
    "n_audio_ctx": 16,
    "n_audio_state": 64,
    "n_audio_head": 2,
    "n_audio_layer": 1,
    "n_text_ctx": 8,
    "n_text_state": 64,
    "n_text_head": 2,
    "n_text_layer": 1,
    "n_mels": 80,
    "ftype": 1,
}
PIN = ModelPin(name="toy", provider="ct2", hparams=dict(HP))


def _models(d: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    mel = rng.random((80, 201), dtype=np.float32)
    vocab = [f"tok{i}".encode() for i in range(HP["n_vocab"])]
    values = {
        name: rng.normal(0, 0.05, shape).astype(np.float16)
        for name, (_, shape) in ggml.expected_inventory(HP, quantized=False).items()
    }
    f16 = ggml.write_model(
        d / "f16.bin",
        HP,
        mel,
        vocab,
        ((n, t, values[n]) for n, (t, _) in ggml.expected_inventory(HP, quantized=False).items()),
    ).path
    qh = dict(HP, ftype=ggml.FTYPE_Q5_1)
    q = ggml.write_model(
        d / "ggml-toy-q5_1.bin",
        qh,
        mel,
        vocab,
        (
            (
                n,
                t,
                values[n].astype(np.float32)
                if t == ggml.GGML_TYPE_Q5_1
                else values[n].astype(np.float32 if t == ggml.GGML_TYPE_F32 else np.float16),
            )
            for n, (t, _) in ggml.expected_inventory(HP, quantized=True).items()
        ),
    ).path
    return f16, q


def _quantized(d: Path, f16: Path, quant: str) -> Path:
    """The toy f16 model quantized to `quant` with our numpy encoder (bit-identical to ggml's)."""
    c = quants.codec(quant)
    src = {t.name: ggml.read_tensor(f16, t) for t in ggml.iter_tensors(f16)}
    return ggml.write_model(
        d / f"ggml-toy-{quant}.bin",
        dict(HP, ftype=ggml.ftype_for(c.qtype)),
        ggml.read_mel_filters(f16),
        ggml.read_vocab(f16),
        (
            (n, t, src[n].astype(np.float32) if t == c.qtype else src[n])
            for n, (t, _) in ggml.expected_inventory(HP, quantized=True, qtype=c.qtype).items()
        ),
    ).path


# Each type beside the primary q5_1 (whose tests follow): a byte of block 2 to flip, the mask, and
# the element it moves (q8_0: value 7 by 16 steps of d; q4_0: the high nibble of byte 7, value 23, by
# 4 steps).
FLIPS = {"q8_0": (2 + 7, 0x10, 7), "q4_0": (2 + 7, 0x40, 23)}


@pytest.fixture(scope="module", params=sorted(FLIPS))
def other(
    request: pytest.FixtureRequest, models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The toy f16 model quantized to each type of FLIPS."""
    quant = request.param
    return _quantized(tmp_path_factory.mktemp(quant), models[0], quant)


def _quant_of(path: Path) -> str:
    return path.stem.rsplit("-", 1)[-1]


def test_good_model_of_each_type_has_no_findings(models: tuple[Path, Path], other: Path) -> None:
    f16, _ = models
    quant = _quant_of(other)
    sums = {other.name: integrity.sha256_file(other)}
    assert integrity.check_model_file(other, PIN, quant, sums=sums) == []
    n = integrity.check_numerics(other, f16, quant)
    assert n.findings == [] and n.quantized_tensors > 0 and n.copied_tensors > 0
    assert 0.5 < n.worst_ratio <= 1.0


def test_flipped_byte_in_a_block_of_each_type_is_out_of_bound(
    models: tuple[Path, Path], other: Path, tmp_path: Path
) -> None:
    f16, _ = models
    quant = _quant_of(other)
    c = quants.codec(quant)
    at, mask, element = FLIPS[quant]
    bad = _copy(other, tmp_path)
    info = next(t for t in ggml.iter_tensors(bad) if t.ttype == c.qtype)
    blob = bytearray(bad.read_bytes())
    blob[info.data_offset + 2 * c.block_bytes + at] ^= mask
    bad.write_bytes(bytes(blob))
    n = integrity.check_numerics(bad, f16, quant)
    assert n.over_bound == 1
    (f,) = n.findings
    assert f.check == f"{quant} tensor {info.name}"
    assert f"block 2 (file byte {info.data_offset + 2 * c.block_bytes}) element {element}" in f.got


@pytest.mark.parametrize(("quant", "ftype"), [("q8_0", "2007"), ("q4_0", "2002")])
def test_q5_1_file_is_not_a_file_of_another_type(models: tuple[Path, Path], quant: str, ftype: str) -> None:
    _, q = models
    findings = integrity.check_model_file(q, PIN, quant)
    assert ("hparam ftype", ftype, "2009") in [(f.check, f.wanted, f.got) for f in findings]
    assert any(f.check.startswith("tensor ") and f.wanted.startswith(quant) for f in findings)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _models(tmp_path_factory.mktemp("models"))


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def _first_q5_1(path: Path) -> ggml.TensorInfo:
    return next(t for t in ggml.iter_tensors(path) if t.ttype == ggml.GGML_TYPE_Q5_1)


def test_good_model_has_no_findings(models: tuple[Path, Path]) -> None:
    f16, q = models
    sums = {q.name: integrity.sha256_file(q)}
    assert integrity.check_model_file(q, PIN, sums=sums) == []
    n = integrity.check_numerics(q, f16)
    assert n.findings == []
    assert n.quantized_tensors > 0 and n.copied_tensors > 0
    assert n.elements == sum(t.n_elements for t in ggml.iter_tensors(q) if t.ttype == ggml.GGML_TYPE_Q5_1)
    assert 0.5 < n.worst_ratio <= 1.0  # rounding to 32 levels uses most of the d/2 budget somewhere


def test_flipped_bit_in_a_block_is_out_of_bound(models: tuple[Path, Path], tmp_path: Path) -> None:
    f16, q = models
    bad = _copy(q, tmp_path)
    info = _first_q5_1(bad)
    blob = bytearray(bad.read_bytes())
    at = info.data_offset + 3 * quants.codec("q5_1").block_bytes + 8  # block 3, first qs byte (low nibbles)
    blob[at] ^= 0x08  # q changes by 8 steps: 8·d, far beyond d/2
    bad.write_bytes(bytes(blob))
    n = integrity.check_numerics(bad, f16)
    assert n.over_bound == 1
    (f,) = n.findings
    assert f.file == str(bad) and info.name in f.check
    assert "block 3" in f.got and f"file byte {info.data_offset + 3 * 24}" in f.got
    assert "within its block's quantisation bound" in f.wanted
    sums = {q.name: integrity.sha256_file(q)}
    (h,) = integrity.check_model_file(bad, PIN, sums=sums)
    assert h.check == "sha256" and h.wanted.startswith(sums[q.name]) and h.got == integrity.sha256_file(bad)


def test_truncated_model(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, q = models
    bad = _copy(q, tmp_path)
    size = q.stat().st_size
    with bad.open("r+b") as fh:
        fh.truncate(size - 100)
    findings = integrity.check_model_file(bad, PIN)
    text = "\n".join(map(str, findings))
    assert f"wanted {size} bytes (header + every tensor), got {size - 100} bytes" in text
    assert "truncated" in text
    assert all(f.file == str(bad) for f in findings)


def test_wrong_hparam(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, q = models
    bad = _copy(q, tmp_path)
    blob = bytearray(bad.read_bytes())
    blob[4 + 4 * 3 : 8 + 4 * 3] = (3).to_bytes(4, "little")  # n_audio_head 2 -> 3
    bad.write_bytes(bytes(blob))
    findings = integrity.check_model_file(bad, PIN)
    assert [(f.check, f.wanted, f.got) for f in findings] == [("hparam n_audio_head", "2", "3")]
    assert "release.toml" in findings[0].action


def test_f16_file_is_not_a_q5_1_release(models: tuple[Path, Path]) -> None:
    f16, _ = models
    findings = integrity.check_model_file(f16, PIN)
    assert ("hparam ftype", "2009", "1") in [(f.check, f.wanted, f.got) for f in findings]
    assert any(
        f.check.startswith("tensor ") and f.wanted.startswith("q5_1") and f.got.startswith("f16")
        for f in findings
    )


def test_copied_tensor_must_be_identical(models: tuple[Path, Path], tmp_path: Path) -> None:
    f16, q = models
    bad = _copy(q, tmp_path)
    info = next(t for t in ggml.iter_tensors(bad) if t.ttype == ggml.GGML_TYPE_F32)
    blob = bytearray(bad.read_bytes())
    blob[info.data_offset] ^= 1
    bad.write_bytes(bytes(blob))
    (f,) = integrity.check_numerics(bad, f16).findings
    assert info.name in f.check and "byte-identical" in f.wanted


def _artifact_tree(tmp_path: Path, q: Path) -> tuple[Path, Path]:
    root = tmp_path / "release_artifacts"
    d = root / "whisper_toy_xeon"
    d.mkdir(parents=True)
    shutil.copyfile(q, d / q.name)
    (d / "README.md").write_text("toy\n")
    (d / "SHA256SUMS").write_text(
        "".join(f"{integrity.sha256_file(p)}  {p.name}\n" for p in sorted(d.iterdir()))
    )
    subjects = [
        {"name": f"{d.name}/{p.name}", "digest": {"sha256": integrity.sha256_file(p)}}
        for p in sorted(d.iterdir())
    ]
    (root / "manifest.json").write_text(json.dumps({"subject": subjects}))
    return root, d


def test_sums_and_manifest(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, q = models
    root, d = _artifact_tree(tmp_path, q)
    assert integrity.check_sums(d) == []
    assert integrity.check_manifest(root, d) == []
    assert integrity.check_layout(d, ["README.md", "SHA256SUMS", q.name]) == []
    assert integrity.model_name_of(d) == "toy"

    # An edited SHA256SUMS: one digest changed.
    sums = (d / "SHA256SUMS").read_text().splitlines()
    fake = hashlib.sha256(b"x").hexdigest()
    real = sums[0].split()[0]
    (d / "SHA256SUMS").write_text("\n".join([f"{fake}  {sums[0].split()[1]}", *sums[1:]]) + "\n")
    (f,) = integrity.check_sums(d)
    assert f.file.endswith(sums[0].split()[1]) and f.wanted.startswith(fake) and f.got == real
    (m,) = integrity.check_manifest(root, d)  # SHA256SUMS itself no longer matches the manifest
    assert m.file.endswith("SHA256SUMS") and "manifest.json" in m.wanted


def test_missing_file_everywhere(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, q = models
    root, d = _artifact_tree(tmp_path, q)
    (d / "README.md").unlink()
    assert [(f.file, f.got) for f in integrity.check_layout(d, ["README.md", "SHA256SUMS", q.name])] == [
        (str(d / "README.md"), "missing")
    ]
    assert [(f.file, f.got) for f in integrity.check_sums(d)] == [(str(d / "README.md"), "missing")]
    assert [(f.file, f.got) for f in integrity.check_manifest(root, d)] == [(str(d / "README.md"), "missing")]


def test_malformed_sums_line(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "SHA256SUMS").write_text("nonsense line\n")
    findings = integrity.check_sums(tmp_path)
    assert [f.check for f in findings] == ["line 1", "entry for a"]
