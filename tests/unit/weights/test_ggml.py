"""The ggml file format and the q4_0, q5_1 and q8_0 codecs, against independent references."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import HPARAM_ORDER, load_pins
from whisper_release.weights import ggml

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _q5_1_reference(x: np.ndarray) -> bytes:
    """A literal, scalar transcription of ggml's quantize_row_q5_1_ref (ggml-quants.c)."""
    f32 = np.float32
    out = bytearray()
    flat = x.astype(np.float32).reshape(-1)
    for i in range(flat.size // 32):
        blk = flat[i * 32:(i + 1) * 32]
        vmin, vmax = f32(np.finfo(np.float32).max), f32(-np.finfo(np.float32).max)
        for v in blk:
            if v < vmin:
                vmin = v
            if v > vmax:
                vmax = v
        d = f32((vmax - vmin) / f32(31))
        inv = f32(f32(1.0) / d) if d else f32(0.0)
        qh = 0
        qs = bytearray(16)
        for j in range(16):
            x0 = f32((blk[j] - vmin) * inv)
            x1 = f32((blk[16 + j] - vmin) * inv)
            xi0 = int(f32(x0 + f32(0.5))) & 0xFF
            xi1 = int(f32(x1 + f32(0.5))) & 0xFF
            qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4)
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + 16)
        out += np.float16(d).tobytes() + np.float16(vmin).tobytes() + struct.pack("<I", qh) + bytes(qs)
    return bytes(out)


def _q5_1_decode_reference(raw: bytes) -> np.ndarray:
    """Scalar transcription of dequantize_row_q5_1."""
    vals = []
    for off in range(0, len(raw), 24):
        d = np.float32(np.frombuffer(raw[off:off + 2], "<f2")[0])
        m = np.float32(np.frombuffer(raw[off + 2:off + 4], "<f2")[0])
        (qh,) = struct.unpack("<I", raw[off + 4:off + 8])
        qs = raw[off + 8:off + 24]
        lo = [(qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10) for j in range(16)]
        hi = [(qs[j] >> 4) | ((qh >> (j + 12)) & 0x10) for j in range(16)]
        vals += [np.float32(q * d + m) for q in lo + hi]
    return np.array(vals, dtype=np.float32)


finite = st.floats(-60000, 60000, allow_nan=False, width=32)
blocks = hnp.arrays(np.float32, st.integers(1, 4).map(lambda n: (n * 32,)), elements=finite)


def _q5_1_defined(x: np.ndarray) -> bool:
    # As for q8_0 below: d = (max - min)/31; a subnormal d gives 1/d = inf, and C's cast of inf to an
    # integer is undefined behaviour that no model weight reaches. Constant blocks are fine (d = 0).
    b = x.reshape(-1, 32).astype(np.float64)
    span = b.max(axis=1) - b.min(axis=1)
    return bool(((span == 0) | (span > 31e-30)).all())


@FAST
@given(blocks)
def test_q5_1_encode_matches_ggml_reference_bit_for_bit(x):
    assume(_q5_1_defined(x))
    assert ggml.q5_1_encode(x) == _q5_1_reference(x)


@FAST
@given(blocks)
def test_q5_1_decode_matches_reference_and_stays_within_bound(x):
    assume(_q5_1_defined(x))
    raw = ggml.q5_1_encode(x)
    assert len(raw) == x.size // 32 * 24
    y = ggml.q5_1_decode(raw, x.size)
    np.testing.assert_array_equal(y, _q5_1_decode_reference(raw))
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = ggml.q5_1_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q5_1_bound_is_tight_enough_to_catch_a_wrong_block():
    # A bound that accepts anything would make the verification worthless.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(ggml.q5_1_encode(x))
    raw[8 + 24 * 5] ^= 0x0F  # flip four quant bits of one value of block 5
    y = ggml.q5_1_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > ggml.q5_1_error_bound(bytes(raw), x.size)
    assert bad.tolist() == [i == 5 for i in range(64)]


def test_q5_1_edge_blocks():
    const = np.full(32, 3.25, np.float32)  # d = 0: every value decodes to m exactly
    np.testing.assert_array_equal(ggml.q5_1_decode(ggml.q5_1_encode(const), 32), const)
    zeros = np.zeros(32, np.float32)
    zeros[3] = -0.0  # C keeps the first of equal minima; m must be +0.0 here
    assert ggml.q5_1_encode(zeros) == _q5_1_reference(zeros)
    with pytest.raises(ValueError):
        ggml.q5_1_encode(np.zeros(31, np.float32))
    with pytest.raises(ValueError):
        ggml.q5_1_decode(b"\0" * 23, 32)


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
       quant=st.sampled_from(sorted(ggml.CODECS)), seed=st.integers(0, 2**32 - 1))
def test_model_round_trip(tmp_path_factory, hp, vocab, n_fft, quantized, quant, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("m") / "model.bin"
    mel = rng.standard_normal((hp["n_mels"], n_fft)).astype(np.float32)
    c = ggml.codec(quant)
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
    assert [ggml.ftype_for(ggml.codec(q).qtype) for q in ("q4_0", "q5_1", "q8_0")] == [2002, 2009, 2007]


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
    raw = ggml.q5_1_encode(x)
    out = tmp_path / "raw.bin"
    ggml.write_model(out, hp, np.ones((1, 1), np.float32), [],
                     [ggml.RawTensor("w", ggml.GGML_TYPE_Q5_1, (2, 32), raw)])
    (info,) = ggml.iter_tensors(out)
    assert info.ne == (32, 2) and ggml.read_tensor_bytes(out, info) == raw


def _q8_0_reference(x: np.ndarray) -> bytes:
    """A literal, scalar transcription of ggml's quantize_row_q8_0_ref (ggml-quants.c)."""
    import math

    f32 = np.float32
    out = bytearray()
    flat = x.astype(np.float32).reshape(-1)
    for i in range(flat.size // 32):
        blk = flat[i * 32:(i + 1) * 32]
        amax = f32(0.0)
        for v in blk:
            amax = max(amax, f32(abs(v)))
        d = f32(amax / f32(127))
        inv = f32(f32(1.0) / d) if d else f32(0.0)
        qs = bytearray()
        for v in blk:
            x0 = float(f32(v * inv))
            r = math.copysign(math.floor(abs(x0) + 0.5), x0)  # C roundf: half away from zero
            qs.append(int(r) & 0xFF)
        out += np.float16(d).tobytes() + bytes(qs)
    return bytes(out)


def _amax_defined(x: np.ndarray) -> bool:
    # q8_0 and q4_0 divide by d = amax/127 or max/-8: a block whose d is subnormal gets 1/d = inf and
    # C's cast of inf to an integer is undefined behaviour, which no model weight reaches. Zero blocks
    # are fine (d = 0).
    amax = np.abs(x.reshape(-1, 32)).max(axis=1)
    return bool(((amax == 0) | (amax > 1e-30)).all())


@FAST
@given(blocks)
def test_q8_0_encode_matches_ggml_reference_bit_for_bit(x):
    assume(_amax_defined(x))
    assert ggml.q8_0_encode(x) == _q8_0_reference(x)


@FAST
@given(blocks)
def test_q8_0_decode_stays_within_bound(x):
    assume(_amax_defined(x))
    raw = ggml.q8_0_encode(x)
    assert len(raw) == x.size // 32 * 34
    y = ggml.q8_0_decode(raw, x.size)
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = ggml.q8_0_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q8_0_rounds_half_away_from_zero():
    # 127 * k / 254 lands exactly on .5 steps for odd k: numpy's default rounding (half to even)
    # would differ from C's roundf here.
    x = np.zeros(32, np.float32)
    x[0] = 127.0
    x[1], x[2], x[3] = 0.5, -1.5, 2.5
    q = np.frombuffer(ggml.q8_0_encode(x)[2:], np.int8)
    assert q[:4].tolist() == [127, 1, -2, 3]
    assert ggml.q8_0_encode(x) == _q8_0_reference(x)


def test_q8_0_bound_is_tight_enough_to_catch_a_wrong_block():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(ggml.q8_0_encode(x))
    raw[2 + 34 * 9 + 5] ^= 0x04  # one value of block 9 moves by 4 steps of d
    y = ggml.q8_0_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > ggml.q8_0_error_bound(bytes(raw), x.size)
    assert bad.tolist() == [i == 9 for i in range(64)]


def _q4_0_reference(x: np.ndarray) -> bytes:
    """A literal, scalar transcription of ggml's quantize_row_q4_0_ref (ggml-quants.c)."""
    f32 = np.float32
    out = bytearray()
    flat = x.astype(np.float32).reshape(-1)
    for i in range(flat.size // 32):
        blk = flat[i * 32:(i + 1) * 32]
        amax, vmax = f32(0.0), f32(0.0)
        for v in blk:
            if amax < abs(v):
                amax, vmax = f32(abs(v)), v
        d = f32(vmax / f32(-8))
        inv = f32(f32(1.0) / d) if d else f32(0.0)
        qs = bytearray(16)
        for j in range(16):
            # (int8_t)(x*id + 8.5f): C truncates toward zero; then MIN(15, ...).
            xi0 = min(15, int(f32(f32(blk[j] * inv) + f32(8.5))))
            xi1 = min(15, int(f32(f32(blk[16 + j] * inv) + f32(8.5))))
            qs[j] = xi0 | (xi1 << 4)
        out += np.float16(d).tobytes() + bytes(qs)
    return bytes(out)


def _q4_0_decode_reference(raw: bytes) -> np.ndarray:
    """Scalar transcription of dequantize_row_q4_0."""
    vals = []
    for off in range(0, len(raw), 18):
        d = np.float32(np.frombuffer(raw[off:off + 2], "<f2")[0])
        qs = raw[off + 2:off + 18]
        vals += [np.float32(((b & 0x0F) - 8) * d) for b in qs] + [np.float32(((b >> 4) - 8) * d) for b in qs]
    return np.array(vals, dtype=np.float32)


@FAST
@given(blocks)
def test_q4_0_encode_matches_ggml_reference_bit_for_bit(x):
    assume(_amax_defined(x))
    assert ggml.q4_0_encode(x) == _q4_0_reference(x)


@FAST
@given(blocks)
def test_q4_0_decode_matches_reference_and_stays_within_bound(x):
    assume(_amax_defined(x))
    raw = ggml.q4_0_encode(x)
    assert len(raw) == x.size // 32 * 18
    y = ggml.q4_0_decode(raw, x.size)
    np.testing.assert_array_equal(y, _q4_0_decode_reference(raw))
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = ggml.q4_0_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q4_0_decodes_known_bytes():
    # d = f16 0x3800 = 0.5; byte j holds value j (low nibble) and value j + 16 (high nibble).
    raw = bytes([0x00, 0x38]) + bytes([0x80, 0x0F, 0xF0] + [0x88] * 13)
    want = [-4.0, 3.5, -4.0] + [0.0] * 13 + [0.0, -4.0, 3.5] + [0.0] * 13
    assert ggml.q4_0_decode(raw, 32).tolist() == want
    with pytest.raises(ValueError, match="q4_0 data of 17 bytes does not hold 32 values"):
        ggml.q4_0_decode(raw[:17], 32)


def test_q4_0_scale_sign_clamp_and_zero_block():
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2] = -2.0, 2.0, 1.0  # the first of equal magnitudes is max: d = -2/-8 = +0.25
    raw = ggml.q4_0_encode(x)
    assert raw[:2] == np.float16(0.25).tobytes()
    # 2.0 is +8 steps: 16.5 truncates to 16, clamped to 15, so it decodes to 7 steps (1.75), a whole
    # step off; the bound allows that only because the block holds a 15.
    y = ggml.q4_0_decode(raw, 32)
    assert y[:3].tolist() == [-2.0, 1.75, 1.0]
    assert ggml.q4_0_error_bound(raw, 32)[0] >= 0.25
    assert raw == _q4_0_reference(x)
    unclamped = ggml.q4_0_encode(np.linspace(-1, 0.5, 32, dtype=np.float32))
    assert ggml.q4_0_error_bound(unclamped, 32)[0] < 0.5 * 0.125 * 1.01  # half a step of d = 1/8
    # All zeros, either sign: C starts from max = +0.0, so d = +0.0/-8 = -0.0 (f16 0x8000).
    for zeros in (np.zeros(32, np.float32), np.full(32, -0.0, np.float32)):
        raw = ggml.q4_0_encode(zeros)
        assert raw == _q4_0_reference(zeros) == bytes([0x00, 0x80]) + bytes([0x88] * 16)
    with pytest.raises(ValueError, match="q4_0 needs a multiple of 32 values, got 31"):
        ggml.q4_0_encode(np.zeros(31, np.float32))


def test_q4_0_rounds_half_up():
    # max = -8 gives d = 1: (int8_t)(t + 8.5f) sends every tie toward +inf (-1.5 -> -1, 0.5 -> 1),
    # where numpy's round (half to even) or C's roundf (half away from zero) would differ.
    x = np.zeros(32, np.float32)
    x[0] = -8.0
    x[1:6] = [0.5, -0.5, 1.5, -1.5, 2.5]
    q = ggml.q4_0_decode(ggml.q4_0_encode(x), 32)
    assert q[:6].tolist() == [-8.0, 1.0, 0.0, 2.0, -1.0, 3.0]
    assert ggml.q4_0_encode(x) == _q4_0_reference(x)


def test_q4_0_bound_is_tight_enough_to_catch_a_wrong_block():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(ggml.q4_0_encode(x))
    raw[2 + 18 * 11 + 4] ^= 0x40  # value 20 of block 11 moves by 4 steps of d
    y = ggml.q4_0_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > ggml.q4_0_error_bound(bytes(raw), x.size)
    assert bad.tolist() == [i == 11 for i in range(64)]


@pytest.mark.parametrize("quant", sorted(ggml.CODECS))
def test_codec_table_matches_type_traits(quant):
    c = ggml.codec(quant)
    assert c.name == ggml.type_name(c.qtype) == quant
    assert ggml.tensor_nbytes(c.qtype, (2, 64)) == 4 * c.block_bytes
    x = np.linspace(-3, 5, 2 * 64, dtype=np.float32).reshape(2, 64)
    assert len(c.encode(x)) == 4 * c.block_bytes and c.decode(c.encode(x), x.size).shape == (x.size,)


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(ValueError, match="no decoder for quantization type 'q4_1'; known: q4_0, q5_1, q8_0"):
        ggml.codec("q4_1")
