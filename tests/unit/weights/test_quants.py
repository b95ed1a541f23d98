"""ggml's quantization codecs (q4_0, q5_1, q8_0) against literal scalar transcriptions of ggml-quants.c."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from whisper_release.weights import ggml, quants

FAST = settings(max_examples=40, deadline=None)


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
    assert quants.q5_1_encode(x) == _q5_1_reference(x)


@FAST
@given(blocks)
def test_q5_1_decode_matches_reference_and_stays_within_bound(x):
    assume(_q5_1_defined(x))
    raw = quants.q5_1_encode(x)
    assert len(raw) == x.size // 32 * 24
    y = quants.q5_1_decode(raw, x.size)
    np.testing.assert_array_equal(y, _q5_1_decode_reference(raw))
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = quants.q5_1_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q5_1_bound_is_tight_enough_to_catch_a_wrong_block():
    # A bound that accepts anything would make the verification worthless.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(quants.q5_1_encode(x))
    raw[8 + 24 * 5] ^= 0x0F  # flip four quant bits of one value of block 5
    y = quants.q5_1_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > quants.q5_1_error_bound(bytes(raw), x.size)
    assert bad.tolist() == [i == 5 for i in range(64)]


def test_q5_1_edge_blocks():
    const = np.full(32, 3.25, np.float32)  # d = 0: every value decodes to m exactly
    np.testing.assert_array_equal(quants.q5_1_decode(quants.q5_1_encode(const), 32), const)
    zeros = np.zeros(32, np.float32)
    zeros[3] = -0.0  # C keeps the first of equal minima; m must be +0.0 here
    assert quants.q5_1_encode(zeros) == _q5_1_reference(zeros)
    with pytest.raises(ValueError):
        quants.q5_1_encode(np.zeros(31, np.float32))
    with pytest.raises(ValueError):
        quants.q5_1_decode(b"\0" * 23, 32)


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
    assert quants.q8_0_encode(x) == _q8_0_reference(x)


@FAST
@given(blocks)
def test_q8_0_decode_stays_within_bound(x):
    assume(_amax_defined(x))
    raw = quants.q8_0_encode(x)
    assert len(raw) == x.size // 32 * 34
    y = quants.q8_0_decode(raw, x.size)
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = quants.q8_0_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q8_0_rounds_half_away_from_zero():
    # 127 * k / 254 lands exactly on .5 steps for odd k: numpy's default rounding (half to even)
    # would differ from C's roundf here.
    x = np.zeros(32, np.float32)
    x[0] = 127.0
    x[1], x[2], x[3] = 0.5, -1.5, 2.5
    q = np.frombuffer(quants.q8_0_encode(x)[2:], np.int8)
    assert q[:4].tolist() == [127, 1, -2, 3]
    assert quants.q8_0_encode(x) == _q8_0_reference(x)


def test_q8_0_bound_is_tight_enough_to_catch_a_wrong_block():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(quants.q8_0_encode(x))
    raw[2 + 34 * 9 + 5] ^= 0x04  # one value of block 9 moves by 4 steps of d
    y = quants.q8_0_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > quants.q8_0_error_bound(bytes(raw), x.size)
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
    assert quants.q4_0_encode(x) == _q4_0_reference(x)


@FAST
@given(blocks)
def test_q4_0_decode_matches_reference_and_stays_within_bound(x):
    assume(_amax_defined(x))
    raw = quants.q4_0_encode(x)
    assert len(raw) == x.size // 32 * 18
    y = quants.q4_0_decode(raw, x.size)
    np.testing.assert_array_equal(y, _q4_0_decode_reference(raw))
    err = np.abs(x.astype(np.float64) - y).reshape(-1, 32).max(axis=1)
    bound = quants.q4_0_error_bound(raw, x.size)
    assert (err <= bound).all(), (err, bound)


def test_q4_0_decodes_known_bytes():
    # d = f16 0x3800 = 0.5; byte j holds value j (low nibble) and value j + 16 (high nibble).
    raw = bytes([0x00, 0x38]) + bytes([0x80, 0x0F, 0xF0] + [0x88] * 13)
    want = [-4.0, 3.5, -4.0] + [0.0] * 13 + [0.0, -4.0, 3.5] + [0.0] * 13
    assert quants.q4_0_decode(raw, 32).tolist() == want
    with pytest.raises(ValueError, match="q4_0 data of 17 bytes does not hold 32 values"):
        quants.q4_0_decode(raw[:17], 32)


def test_q4_0_scale_sign_clamp_and_zero_block():
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2] = -2.0, 2.0, 1.0  # the first of equal magnitudes is max: d = -2/-8 = +0.25
    raw = quants.q4_0_encode(x)
    assert raw[:2] == np.float16(0.25).tobytes()
    # 2.0 is +8 steps: 16.5 truncates to 16, clamped to 15, so it decodes to 7 steps (1.75), a whole
    # step off; the bound allows that only because the block holds a 15.
    y = quants.q4_0_decode(raw, 32)
    assert y[:3].tolist() == [-2.0, 1.75, 1.0]
    assert quants.q4_0_error_bound(raw, 32)[0] >= 0.25
    assert raw == _q4_0_reference(x)
    unclamped = quants.q4_0_encode(np.linspace(-1, 0.5, 32, dtype=np.float32))
    assert quants.q4_0_error_bound(unclamped, 32)[0] < 0.5 * 0.125 * 1.01  # half a step of d = 1/8
    # All zeros, either sign: C starts from max = +0.0, so d = +0.0/-8 = -0.0 (f16 0x8000).
    for zeros in (np.zeros(32, np.float32), np.full(32, -0.0, np.float32)):
        raw = quants.q4_0_encode(zeros)
        assert raw == _q4_0_reference(zeros) == bytes([0x00, 0x80]) + bytes([0x88] * 16)
    with pytest.raises(ValueError, match="q4_0 needs a multiple of 32 values, got 31"):
        quants.q4_0_encode(np.zeros(31, np.float32))


def test_q4_0_rounds_half_up():
    # max = -8 gives d = 1: (int8_t)(t + 8.5f) sends every tie toward +inf (-1.5 -> -1, 0.5 -> 1),
    # where numpy's round (half to even) or C's roundf (half away from zero) would differ.
    x = np.zeros(32, np.float32)
    x[0] = -8.0
    x[1:6] = [0.5, -0.5, 1.5, -1.5, 2.5]
    q = quants.q4_0_decode(quants.q4_0_encode(x), 32)
    assert q[:6].tolist() == [-8.0, 1.0, 0.0, 2.0, -1.0, 3.0]
    assert quants.q4_0_encode(x) == _q4_0_reference(x)


def test_q4_0_bound_is_tight_enough_to_catch_a_wrong_block():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(32 * 64).astype(np.float32)
    raw = bytearray(quants.q4_0_encode(x))
    raw[2 + 18 * 11 + 4] ^= 0x40  # value 20 of block 11 moves by 4 steps of d
    y = quants.q4_0_decode(bytes(raw), x.size)
    err = np.abs(x - y).reshape(-1, 32).max(axis=1)
    bad = err > quants.q4_0_error_bound(bytes(raw), x.size)
    assert bad.tolist() == [i == 11 for i in range(64)]


@pytest.mark.parametrize("quant", sorted(quants.CODECS))
def test_codec_table_matches_type_traits(quant):
    c = quants.codec(quant)
    assert c.name == ggml.type_name(c.qtype) == quant
    assert ggml.tensor_nbytes(c.qtype, (2, 64)) == 4 * c.block_bytes
    x = np.linspace(-3, 5, 2 * 64, dtype=np.float32).reshape(2, 64)
    assert len(c.encode(x)) == 4 * c.block_bytes and c.decode(c.encode(x), x.size).shape == (x.size,)


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(ValueError, match="no decoder for quantization type 'q4_1'; known: q4_0, q5_1, q8_0"):
        quants.codec("q4_1")
