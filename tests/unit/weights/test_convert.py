"""CTranslate2 -> ggml conversion on small random Whisper-shaped models, checked tensor by tensor."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisper_release import cli
from whisper_release.core.errors import ConversionError
from whisper_release.weights import convert, ct2, ggml

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fake_ct2_whisper(s_a: int, s_t: int, layers_a: int, layers_t: int, n_vocab: int, n_mels: int,
                     seed: int = 0, heads: int = 2) -> dict[str, np.ndarray]:
    """Variables as ct2-transformers-converter writes them for Whisper (names, fusions, dtypes)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    v: dict[str, np.ndarray] = {
        "decoder/activation": np.array(1, np.int8),
        "decoder/alignment_heads": np.array(4, np.int16),
        "decoder/embeddings/weight": w(n_vocab, s_t),
        "decoder/num_heads": np.array(heads, np.int16),
        "decoder/position_encodings/encodings": w(7, s_t),
        "decoder/layer_norm/gamma": w(s_t),
        "decoder/layer_norm/beta": w(s_t),
        "encoder/conv1/weight": w(s_a, n_mels, 3),
        "encoder/conv1/bias": w(s_a),
        "encoder/conv2/weight": w(s_a, s_a, 3),
        "encoder/conv2/bias": w(s_a),
        "encoder/layer_norm/gamma": w(s_a),
        "encoder/layer_norm/beta": w(s_a),
        "encoder/num_heads": np.array(heads, np.int16),
        "encoder/position_encodings/encodings": w(9, s_a),
    }
    for side, s, n in (("encoder", s_a, layers_a), ("decoder", s_t, layers_t)):
        for i in range(n):
            p = f"{side}/layer_{i}"
            v[f"{p}/self_attention/linear_0/weight"] = w(3 * s, s)
            v[f"{p}/self_attention/linear_0/bias"] = w(3 * s)
            v[f"{p}/self_attention/linear_1/weight"] = w(s, s)
            v[f"{p}/self_attention/linear_1/bias"] = w(s)
            v[f"{p}/self_attention/layer_norm/gamma"] = w(s)
            v[f"{p}/self_attention/layer_norm/beta"] = w(s)
            v[f"{p}/ffn/linear_0/weight"] = w(4 * s, s)
            v[f"{p}/ffn/linear_0/bias"] = w(4 * s)
            v[f"{p}/ffn/linear_1/weight"] = w(s, 4 * s)
            v[f"{p}/ffn/linear_1/bias"] = w(s)
            v[f"{p}/ffn/layer_norm/gamma"] = w(s)
            v[f"{p}/ffn/layer_norm/beta"] = w(s)
            if side == "decoder":
                v[f"{p}/attention/linear_0/weight"] = w(s, s)
                v[f"{p}/attention/linear_0/bias"] = w(s)
                v[f"{p}/attention/linear_1/weight"] = w(2 * s, s)
                v[f"{p}/attention/linear_1/bias"] = w(2 * s)
                v[f"{p}/attention/linear_2/weight"] = w(s, s)
                v[f"{p}/attention/linear_2/bias"] = w(s)
                v[f"{p}/attention/layer_norm/gamma"] = w(s)
                v[f"{p}/attention/layer_norm/beta"] = w(s)
    return v


def expected_tensors(v: dict[str, np.ndarray], layers_a: int, layers_t: int) -> dict[str, np.ndarray]:
    """The whisper.cpp tensors, written out by hand from FACTS.md's name map (independent of convert.py)."""
    e: dict[str, np.ndarray] = {
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        "encoder.conv1.weight": v["encoder/conv1/weight"],
        "encoder.conv1.bias": v["encoder/conv1/bias"][:, None],
        "encoder.conv2.weight": v["encoder/conv2/weight"],
        "encoder.conv2.bias": v["encoder/conv2/bias"][:, None],
        "encoder.ln_post.weight": v["encoder/layer_norm/gamma"],
        "encoder.ln_post.bias": v["encoder/layer_norm/beta"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
        "decoder.ln.weight": v["decoder/layer_norm/gamma"],
        "decoder.ln.bias": v["decoder/layer_norm/beta"],
    }
    for side, n in (("encoder", layers_a), ("decoder", layers_t)):
        for i in range(n):
            c, g = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            qkv, qkv_b = v[f"{c}/self_attention/linear_0/weight"], v[f"{c}/self_attention/linear_0/bias"]
            q, k, val = np.split(qkv, 3)
            qb, _kb, vb = np.split(qkv_b, 3)
            e |= {
                f"{g}.attn.query.weight": q, f"{g}.attn.query.bias": qb, f"{g}.attn.key.weight": k,
                f"{g}.attn.value.weight": val, f"{g}.attn.value.bias": vb,
                f"{g}.attn.out.weight": v[f"{c}/self_attention/linear_1/weight"],
                f"{g}.attn.out.bias": v[f"{c}/self_attention/linear_1/bias"],
                f"{g}.attn_ln.weight": v[f"{c}/self_attention/layer_norm/gamma"],
                f"{g}.attn_ln.bias": v[f"{c}/self_attention/layer_norm/beta"],
                f"{g}.mlp.0.weight": v[f"{c}/ffn/linear_0/weight"],
                f"{g}.mlp.0.bias": v[f"{c}/ffn/linear_0/bias"],
                f"{g}.mlp.2.weight": v[f"{c}/ffn/linear_1/weight"],
                f"{g}.mlp.2.bias": v[f"{c}/ffn/linear_1/bias"],
                f"{g}.mlp_ln.weight": v[f"{c}/ffn/layer_norm/gamma"],
                f"{g}.mlp_ln.bias": v[f"{c}/ffn/layer_norm/beta"],
            }
            if side == "decoder":
                k2, v2 = np.split(v[f"{c}/attention/linear_1/weight"], 2)
                _k2b, v2b = np.split(v[f"{c}/attention/linear_1/bias"], 2)
                e |= {
                    f"{g}.cross_attn.query.weight": v[f"{c}/attention/linear_0/weight"],
                    f"{g}.cross_attn.query.bias": v[f"{c}/attention/linear_0/bias"],
                    f"{g}.cross_attn.key.weight": k2, f"{g}.cross_attn.value.weight": v2,
                    f"{g}.cross_attn.value.bias": v2b,
                    f"{g}.cross_attn.out.weight": v[f"{c}/attention/linear_2/weight"],
                    f"{g}.cross_attn.out.bias": v[f"{c}/attention/linear_2/bias"],
                    f"{g}.cross_attn_ln.weight": v[f"{c}/attention/layer_norm/gamma"],
                    f"{g}.cross_attn_ln.bias": v[f"{c}/attention/layer_norm/beta"],
                }
    return e


def fake_assets(d: Path, n_mels: int, n_tokens: int = 20) -> Path:
    """A mel_filters.npz and both tiktoken files in openai-whisper's formats, with made-up values."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    # Typed loosely: numpy's stubs read a ** dict as possibly holding savez's allow_pickle flag.
    arrays: dict[str, Any] = {
        f"mel_{n_mels}": rng.random((n_mels, 5)).astype(np.float32),
        "mel_3": np.zeros((3, 5), np.float32),
    }
    np.savez(d / "mel_filters.npz", **arrays)
    for fname, salt in (("gpt2.tiktoken", b"en"), ("multilingual.tiktoken", b"ml")):
        lines = [base64.b64encode(salt + bytes([i]) * (i % 4)) + b" %d" % i for i in range(n_tokens)]
        (d / fname).write_bytes(b"\n".join(lines) + b"\n")
    return d


def tokens_of(path: Path) -> list[bytes]:
    # convert-pt-to-ggml.py collects tokens in a dict: a repeated token keeps its first position.
    # fake_assets repeats some on purpose.
    toks = [base64.b64decode(line.split()[0]) for line in path.read_bytes().splitlines() if line]
    return list(dict.fromkeys(toks))


dims = st.fixed_dictionaries({
    "s_a": st.sampled_from([32, 64]), "s_t": st.sampled_from([32, 64]),
    "layers_a": st.integers(1, 3), "layers_t": st.integers(1, 3),
    "n_vocab": st.integers(5, 30), "n_mels": st.integers(1, 4),
    "seed": st.integers(0, 2**16),
})


@FAST
@given(d=dims)
def test_conversion_reproduces_every_tensor(tmp_path_factory, d):
    tmp = tmp_path_factory.mktemp("conv")
    v = fake_ct2_whisper(**d)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    src = ct2.write_model(tmp / "model.bin", v, aliases=aliases)
    assets = fake_assets(tmp / "assets", d["n_mels"])
    out = tmp / "ggml.bin"
    res = convert.convert_ct2([src], out, assets_dir=assets)

    assert res.tokenizer == "en" and res.size == out.stat().st_size
    header = ggml.read_header(out)
    assert header.hparams == {
        "n_vocab": d["n_vocab"], "n_audio_ctx": 9, "n_audio_state": d["s_a"], "n_audio_head": 2,
        "n_audio_layer": d["layers_a"], "n_text_ctx": 7, "n_text_state": d["s_t"], "n_text_head": 2,
        "n_text_layer": d["layers_t"], "n_mels": d["n_mels"], "ftype": 1,
    }
    assert ggml.read_vocab(out) == tokens_of(assets / "gpt2.tiktoken")
    with np.load(assets / "mel_filters.npz") as f:
        np.testing.assert_array_equal(ggml.read_mel_filters(out), f[f"mel_{d['n_mels']}"])
    want = expected_tensors(v, d["layers_a"], d["layers_t"])
    infos = list(ggml.iter_tensors(out))
    assert {t.name for t in infos} == set(want)
    inventory = ggml.expected_inventory(header.hparams, quantized=False)
    assert {t.name: (t.ttype, t.shape) for t in infos} == inventory
    for t in infos:
        got = ggml.read_tensor(out, t)
        assert got.shape == want[t.name].shape, t.name
        # f16 sources stay bit-identical in f16 tensors and widen exactly into f32 ones.
        np.testing.assert_array_equal(got, want[t.name].astype(got.dtype), err_msg=t.name)
    assert sorted(p.name for p in tmp.iterdir()) == ["assets", "ggml.bin", "model.bin"]


def test_multilingual_vocab_is_picked_from_n_vocab_and_mismatch_is_refused(tmp_path):
    v = fake_ct2_whisper(32, 32, 1, 1, 51865, 2)
    src = ct2.write_model(tmp_path / "model.bin", v)
    assets = fake_assets(tmp_path / "assets", 2)
    res = convert.convert_ct2(src, tmp_path / "ml.bin", assets_dir=assets)
    assert res.tokenizer == "multilingual"
    assert ggml.read_vocab(tmp_path / "ml.bin") == tokens_of(assets / "multilingual.tiktoken")
    with pytest.raises(ConversionError, match="n_vocab 51865.*'multilingual'.*'en' was asked for"):
        convert.convert_ct2(src, tmp_path / "en.bin", assets_dir=assets, tokenizer="en")
    assert not (tmp_path / "en.bin").exists()


def test_int8_weights_are_dequantized(tmp_path):
    v = fake_ct2_whisper(32, 32, 1, 1, 6, 2)
    name = "encoder/layer_0/ffn/linear_0/weight"
    q = np.random.default_rng(3).integers(-127, 127, v[name].shape).astype(np.int8)
    scale = np.linspace(10, 50, q.shape[0]).astype(np.float32)
    v[name], v[name + "_scale"] = q, scale
    src = ct2.write_model(tmp_path / "model.bin", v)
    out = tmp_path / "out.bin"
    convert.convert_ct2(src, out, assets_dir=fake_assets(tmp_path / "a", 2))
    (info,) = [t for t in ggml.iter_tensors(out) if t.name == "encoder.blocks.0.mlp.0.weight"]
    want = (q.astype(np.float32) / scale[:, None]).astype(np.float16)
    np.testing.assert_array_equal(ggml.read_tensor(out, info), want)


def _assert_refused(tmp_path, v, match, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = ct2.write_model(tmp_path / "model.bin", v)
    out = tmp_path / "out" / "ggml.bin"
    out.parent.mkdir()
    with pytest.raises(ConversionError, match=match):
        convert.convert_ct2(src, out, assets_dir=fake_assets(tmp_path / "a", 2), **kw)
    assert list(out.parent.iterdir()) == []  # nothing half-written, not even a temp file


def test_missing_tensor_is_named(tmp_path):
    v = fake_ct2_whisper(32, 32, 2, 1, 6, 2)
    del v["encoder/layer_1/ffn/linear_1/bias"]
    _assert_refused(tmp_path, v, r"encoder/layer_1/ffn/linear_1/bias \(for encoder\.blocks\.1\.mlp\.2\.bias, "
                                 r"expected shape \[32\]\) is missing")


def test_misshaped_tensor_names_expected_and_got(tmp_path):
    v = fake_ct2_whisper(32, 32, 1, 1, 6, 2)
    v["decoder/layer_0/attention/linear_1/weight"] = v["decoder/layer_0/attention/linear_1/weight"][:32]
    _assert_refused(tmp_path, v, r"model\.bin cannot be converted to whisper\.cpp: "
                                 r"decoder/layer_0/attention/linear_1/weight \(for "
                                 r"decoder\.blocks\.0\.cross_attn\.key\.weight\) has shape \[32, 32\], "
                                 r"expected \[64, 32\]\. Convert")


def test_unknown_variable_is_not_dropped_silently(tmp_path):
    v = fake_ct2_whisper(32, 32, 1, 1, 6, 2)
    v["encoder/layer_0/adapter/weight"] = np.zeros((4, 4), np.float16)
    _assert_refused(tmp_path, v, r"encoder/layer_0/adapter/weight \(shape \[4, 4\]\) has no place")
    v = fake_ct2_whisper(32, 32, 1, 1, 6, 2)
    v["decoder/projection/weight"] = v["decoder/embeddings/weight"] + np.float16(1)
    _assert_refused(tmp_path / "b", v, "differs from decoder/embeddings/weight")


def test_missing_layer_and_wrong_spec(tmp_path):
    v = fake_ct2_whisper(32, 32, 3, 1, 6, 2)
    for k in [k for k in v if k.startswith("encoder/layer_1/")]:
        del v[k]
    _assert_refused(tmp_path, v, r"lacks encoder layer\(s\) \[1\]")
    src = ct2.write_model(tmp_path / "t5.bin", fake_ct2_whisper(32, 32, 1, 1, 6, 2), spec="TransformerSpec")
    with pytest.raises(ConversionError, match="'TransformerSpec' model, expected 'WhisperSpec'"):
        convert.convert_ct2(src, tmp_path / "x.bin", assets_dir=fake_assets(tmp_path / "c", 2))


def test_truncated_model_and_missing_assets(tmp_path):
    blob = ct2.write_model(tmp_path / "full.bin", fake_ct2_whisper(32, 32, 1, 1, 6, 2)).read_bytes()
    d = tmp_path / "src"
    d.mkdir()
    (d / "model.bin").write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="truncated"):
        convert.convert_ct2_dir(d, out / "g.bin", assets_dir=fake_assets(tmp_path / "a", 2))
    (d / "model.bin").write_bytes(blob)
    with pytest.raises(ConversionError, match="mel_filters.npz do not exist"):
        convert.convert_ct2_dir(d, out / "g.bin", assets_dir=tmp_path / "empty")
    with pytest.raises(ConversionError, match="no 'mel_2' array"):
        convert.convert_ct2_dir(d, out / "g.bin", assets_dir=fake_assets(tmp_path / "b", 5))
    assert list(out.iterdir()) == []


def test_directory_with_parts_and_the_cli(tmp_path, monkeypatch, capsys):
    v = fake_ct2_whisper(32, 32, 1, 2, 6, 2)
    blob = ct2.write_model(tmp_path / "whole.bin", v).read_bytes()
    d = tmp_path / "model"
    d.mkdir()
    cuts = [0, 1000, 5000, len(blob)]
    for i in range(3):
        (d / f"model.bin.part{i + 1}").write_bytes(blob[cuts[i]:cuts[i + 1]])
    assert convert.find_model_parts(d) == [d / f"model.bin.part{i}" for i in (1, 2, 3)]
    monkeypatch.setenv(convert.ASSETS_ENV, str(fake_assets(tmp_path / "assets", 2)))
    out = tmp_path / "ggml-fake.bin"
    assert cli.main(["convert", "--from", str(d), "--to", str(out)]) == 0
    ref = tmp_path / "ref.bin"
    convert.convert_ct2([tmp_path / "whole.bin"], ref, assets_dir=tmp_path / "assets")
    assert out.read_bytes() == ref.read_bytes()  # deterministic, and parts == whole

    (d / "model.bin.part2").unlink()
    rc = cli.main(["convert", "--from", str(d), "--to", str(tmp_path / "x.bin")])
    assert rc == ConversionError.exit_code
    assert "not consecutive" in capsys.readouterr().err
    assert cli.main(["convert", "--from", str(tmp_path / "nope"), "--to", str(tmp_path / "x.bin")]) == 5
    assert not (tmp_path / "x.bin").exists()
