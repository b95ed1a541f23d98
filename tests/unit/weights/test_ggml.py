"""The ggml file format: header, tensor records, what whisper.cpp loads, the writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import HPARAM_ORDER, load_pins
from whisper_release.weights import ggml, quants

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _hparams(a_state, a_head, a_layer, t_state, t_head, t_layer, n_vocab, n_mels, a_ctx=6, t_ctx=5, ftype=1):
    return dict(zip(HPARAM_ORDER, (n_vocab, a_ctx, a_state, a_head, a_layer, t_ctx, t_state, t_head,
                                   t_layer, n_mels, ftype), strict=True))


tiny_hparams = st.builds(
    _hparams,
    a_state=st.sampled_from([32, 64]), a_head=st.sampled_from([1, 2]), a_layer=st.integers(1, 2),
    t_state=st.sampled_from([32, 64]), t_head=st.sampled_from([1, 2]), t_layer=st.integers(1, 2),
    n_vocab=st.integers(3, 40), n_mels=st.integers(1, 6),
)
vocabs = st.lists(st.binary(min_size=0, max_size=12), max_size=30)


@FAST
@given(hp=tiny_hparams, vocab=vocabs, n_fft=st.integers(1, 9), quantized=st.booleans(),
       quant=st.sampled_from(sorted(quants.CODECS)), seed=st.integers(0, 2**32 - 1))
def test_model_round_trip(tmp_path_factory, hp, vocab, n_fft, quantized, quant, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("m") / "model.bin"
    mel = rng.standard_normal((hp["n_mels"], n_fft)).astype(np.float32)
    c = quants.codec(quant)
    inv = ggml.expected_inventory(hp, quantized=quantized, qtype=c.qtype)
    data = {name: rng.standard_normal(shape).astype(np.float32) for name, (_t, shape) in inv.items()}
    written = ggml.write_model(path, hp, mel, vocab, ((n, t, data[n]) for n, (t, _s) in inv.items()))

    assert written.size == path.stat().st_size
    vocab_bytes = sum(len(v) for v in vocab)
    want_size = ggml.expected_file_size(hp, hp["n_mels"], n_fft, vocab_bytes, len(vocab), quantized, c.qtype)
    assert written.size == want_size
    header = ggml.read_header(path)
    assert header.hparams == hp
    assert (header.n_mel, header.n_fft, header.n_vocab_tokens) == (hp["n_mels"], n_fft, len(vocab))
    assert ggml.read_vocab(path) == vocab
    np.testing.assert_array_equal(ggml.read_mel_filters(path), mel)
    infos = list(ggml.iter_tensors(path))
    assert {t.name: (t.ttype, t.shape) for t in infos} == inv
    assert [t.name for t in infos] == list(inv)
    for t in infos:
        got = ggml.read_tensor(path, t)
        want = data[t.name]
        if t.ttype == ggml.GGML_TYPE_F32:
            np.testing.assert_array_equal(got, want)
        elif t.ttype == ggml.GGML_TYPE_F16:
            np.testing.assert_array_equal(got, want.astype(np.float16))
        else:
            assert t.ttype == c.qtype
            raw = ggml.read_tensor_bytes(path, t)
            assert raw == c.encode(want)
            err = np.abs(got - want).reshape(-1, 32).max(axis=1)
            assert (err <= c.error_bound(raw, t.n_elements)).all()


def test_inventory_types_follow_convert_script_and_quantize_tool():
    hp = _hparams(64, 2, 2, 64, 2, 3, 50, 4)
    f16 = ggml.expected_inventory(hp, quantized=False)
    q = ggml.expected_inventory(hp, quantized=True)
    # whisper.cpp creates 7 + 15/encoder layer + 4 + 24/decoder layer tensors (src/whisper.cpp).
    assert len(f16) == len(q) == 7 + 15 * 2 + 4 + 24 * 3
    assert f16["decoder.token_embedding.weight"] == (ggml.GGML_TYPE_F16, (50, 64))
    assert q["decoder.token_embedding.weight"] == (ggml.GGML_TYPE_Q5_1, (50, 64))
    assert f16["encoder.conv1.weight"] == q["encoder.conv1.weight"] == (ggml.GGML_TYPE_F16, (64, 4, 3))
    for name in ggml.QUANTIZE_SKIP:
        assert f16[name][0] == q[name][0] == ggml.GGML_TYPE_F32
    assert f16["encoder.conv1.bias"][1] == (64, 1)
    assert q["decoder.blocks.2.cross_attn.key.weight"] == (ggml.GGML_TYPE_Q5_1, (64, 64))
    assert q["decoder.blocks.2.cross_attn.key.weight"][0] == ggml.GGML_TYPE_Q5_1
    assert q["encoder.blocks.1.mlp.0.weight"] == (ggml.GGML_TYPE_Q5_1, (256, 64))
    assert all(t == ggml.GGML_TYPE_F32 for t, s in q.values() if len(s) == 1)
    all_f32 = ggml.expected_inventory(dict(hp, ftype=0), quantized=False)
    assert {t for t, _ in all_f32.values()} == {ggml.GGML_TYPE_F32}


@pytest.mark.parametrize("model", ["small", "medium"])
def test_quantized_size_saving_matches_whisper_quantize(model):
    # The header and vocab are copied verbatim by whisper-quantize, so the f16 - q5_1 size difference
    # depends on the tensor inventory alone: it must equal the sizes measured with the real tool.
    pin = load_pins().model(model)
    f16 = ggml.expected_file_size(pin.hparams, 80, 201, 0, 0, quantized=False)
    q51 = ggml.expected_file_size(pin.hparams, 80, 201, 0, 0, quantized=True)
    assert f16 - q51 == pin.size - pin.quantized_size("q5_1")


def test_tensor_nbytes():
    assert ggml.tensor_nbytes(ggml.GGML_TYPE_F32, (3, 5)) == 60
    assert ggml.tensor_nbytes(ggml.GGML_TYPE_F16, (3, 5)) == 30
    assert ggml.tensor_nbytes(ggml.GGML_TYPE_Q5_1, (2, 64)) == 4 * 24
    assert ggml.tensor_nbytes(ggml.GGML_TYPE_Q8_0, (1, 32)) == 34
    assert ggml.tensor_nbytes(ggml.GGML_TYPE_Q4_0, (3, 64)) == 6 * 18
    with pytest.raises(ValueError):
        ggml.tensor_nbytes(ggml.GGML_TYPE_Q5_1, (64, 2))
    assert ggml.FTYPE_Q5_1 == 2009
    # GGML_FTYPE_MOSTLY_* of ggml.h, not the type ids (q8_0 is type 8, ftype 7).
    assert [ggml.ftype_for(quants.codec(q).qtype) for q in ("q4_0", "q5_1", "q8_0")] == [2002, 2009, 2007]


def _small_model(path: Path) -> Path:
    hp = _hparams(32, 1, 1, 32, 1, 1, 4, 2)
    inv = ggml.expected_inventory(hp, quantized=False)
    ggml.write_model(path, hp, np.ones((2, 3), np.float32), [b"a", b"bc"],
                     ((n, t, np.zeros(s, np.float32)) for n, (t, s) in inv.items()))
    return path


def test_truncated_or_foreign_files_are_rejected(tmp_path):
    good = _small_model(tmp_path / "good.bin").read_bytes()
    for cut in (2, 30, 70, len(good) - 1, len(good) - 100):
        bad = tmp_path / f"cut{cut}.bin"
        bad.write_bytes(good[:cut])
        with pytest.raises(VerificationError, match=str(bad)):
            list(ggml.iter_tensors(bad))
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"GGUF" + good[4:])
    with pytest.raises(VerificationError, match="magic"):
        ggml.read_header(foreign)


def test_write_model_leaves_nothing_behind_on_failure(tmp_path):
    hp = _hparams(32, 1, 1, 32, 1, 1, 4, 2)

    def tensors():
        yield "encoder.ln_post.weight", ggml.GGML_TYPE_F32, np.zeros(32, np.float32)
        raise RuntimeError("source broke mid-stream")

    out = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        ggml.write_model(out, hp, np.ones((2, 3), np.float32), [], tensors())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="innermost"):
        ggml.write_model(out, hp, np.ones((2, 3), np.float32), [],
                         [("x", ggml.GGML_TYPE_Q5_1, np.zeros((2, 31), np.float32))])
    assert list(tmp_path.iterdir()) == []


def test_raw_tensors_are_written_verbatim(tmp_path):
    hp = _hparams(32, 1, 1, 32, 1, 1, 4, 2)
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    raw = quants.q5_1_encode(x)
    out = tmp_path / "raw.bin"
    ggml.write_model(out, hp, np.ones((1, 1), np.float32), [],
                     [ggml.RawTensor("w", ggml.GGML_TYPE_Q5_1, (2, 32), raw)])
    (info,) = ggml.iter_tensors(out)
    assert info.ne == (32, 2) and ggml.read_tensor_bytes(out, info) == raw
