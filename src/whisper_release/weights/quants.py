"""ggml's quantized tensor types in numpy: q4_0, q5_1 and q8_0, bit for bit.

Each encoder is ggml's quantize_row_<type>_ref (ggml/src/ggml-quants.c): that is what whisper-quantize
runs (examples/common-ggml.cpp calls ggml_quantize_chunk with no importance matrix, and quantize_<type>
then takes the _ref path). Each decoder is dequantize_row_<type>. Each per-block error bound is derived
from its encoder's arithmetic and computed from the stored block alone, so a file can be checked against
its f16 source without trusting the encoder that wrote it. Pure numpy, no I/O; weights.ggml reads and
writes these types as tensors of a model file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ggml type ids (ggml.h enum ggml_type) and block layouts: (name, values per block, bytes per block).
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q5_1 = 7
GGML_TYPE_Q8_0 = 8
_LAYOUT = {
    GGML_TYPE_Q4_0: ("q4_0", 32, 18),  # f16 d, 16 bytes of nibbles
    GGML_TYPE_Q5_1: ("q5_1", 32, 24),  # f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles
    GGML_TYPE_Q8_0: ("q8_0", 32, 34),  # f16 d, 32 int8
}


def _value_blocks(x: np.ndarray, qtype: int) -> np.ndarray:
    """x as float32 rows of one block each (C order), as ggml walks a row."""
    name, qk, _size = _LAYOUT[qtype]
    v = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if v.size % qk:
        raise ValueError(f"{name} needs a multiple of {qk} values, got {v.size}")
    return v.reshape(-1, qk)


def _reciprocal(d: np.ndarray) -> np.ndarray:
    """ggml's `id = d ? 1.0f/d : 0.0f` in float32 (-0.0 counts as zero, as in C)."""
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def _as_u8(raw: bytes | np.ndarray) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    return np.frombuffer(raw, dtype=np.uint8)


def _byte_blocks(raw: bytes | np.ndarray, n_elements: int, qtype: int) -> np.ndarray:
    """Encoded data as one row of bytes per block, after checking it holds exactly n_elements."""
    name, qk, size = _LAYOUT[qtype]
    buf = _as_u8(raw)
    if n_elements % qk or buf.size != n_elements // qk * size:
        raise ValueError(f"{name} data of {buf.size} bytes does not hold {n_elements} values")
    return buf.reshape(-1, size)


def _f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 at byte `offset` of every block, as float32."""
    return np.ascontiguousarray(blocks[:, offset : offset + 2]).view("<f2").reshape(-1).astype(np.float32)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to f16 (GGML_FP32_TO_FP16: nearest, ties to even) as 2 bytes each."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """ggml's 4-bit packing of a 32-value block: byte j holds value j (low) and value j+16 (high)."""
    return ((q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """The inverse of _pack_nibbles: 32 values in 0..15 per block, as uint32."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.uint32)


def _f16_half_ulp(v: np.ndarray) -> np.ndarray:
    # Half a unit in the last place of an f16 near |v| (11-bit significand); 2**-25 below the
    # normal range, where f16 spacing is 2**-24.
    return np.maximum(np.abs(v.astype(np.float64)) * 2.0**-11, 2.0**-25)


def q4_0_encode(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q4_0_ref in numpy, bit for bit: blocks of 32 values, max = the first value
    of largest magnitude (0.0 when there is none), d = max/-8 stored as f16, id = 1/d (float32, not
    the f16), q = MIN(15, (int8_t)(x*id + 8.5f)), packed two per byte."""
    blocks = _value_blocks(x, GGML_TYPE_Q4_0)
    nb = blocks.shape[0]
    # The C loop keeps the first value with the strictly largest |v| (argmax's first occurrence) and
    # starts from max = +0.0, so a block of zeros of either sign gets d = +0.0/-8 = -0.0.
    pick = blocks[np.arange(nb), np.argmax(np.abs(blocks), axis=1)]
    vmax = np.where(pick != 0, pick, np.float32(0.0))
    d = vmax / np.float32(-8)
    inv = _reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = blocks * inv[:, None] + np.float32(8.5)
    # x*id lies in [-8, 8] up to float32 rounding, so scaled is in [0.5, 16.5]: the int8 cast truncates,
    # and only a value of the sign opposite to max and at least 15/16 of its magnitude reaches 16,
    # which MIN clamps to 15.
    q = np.minimum(scaled.astype(np.int8), 15).astype(np.uint8)
    out = np.empty((nb, _LAYOUT[GGML_TYPE_Q4_0][2]), dtype=np.uint8)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:18] = _pack_nibbles(q)
    return out.tobytes()


def q4_0_decode(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """ggml's dequantize_row_q4_0: value = (q - 8)*d, as a flat float32 array of n_elements."""
    b = _byte_blocks(raw, n_elements, GGML_TYPE_Q4_0)
    d = _f16_field(b, 0)
    q = _unpack_nibbles(b[:, 2:18]).astype(np.float32) - np.float32(8)
    return (q * d[:, None]).reshape(-1)


def q4_0_error_bound(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """Per-block bound on |x - decode(encode(x))| for q4_0, from the stored block alone.

    With d_true = max/-8, each value is t = x/d_true in [-8, 8] steps and q - 8 = floor(t + 0.5), so
    rounding costs half a step, except that t >= 7.5 (a value of the sign opposite to max, at least
    15/16 of its magnitude) is clamped from 8 to q = 15: up to one whole step. Such a block has a 15
    among its quants, so it gets one step and every other block half a step (of |d_true| <= |d| + ulp/2).
    Storing d_true as f16 costs half an ulp, times |q - 8| <= 8. A relative 2**-16 of d (the block's
    magnitude is 8|d|) covers the float32 arithmetic of id, x*id and +8.5.
    """
    b = _byte_blocks(raw, n_elements, GGML_TYPE_Q4_0)
    d = np.abs(_f16_field(b, 0).astype(np.float64))
    ud = _f16_half_ulp(d)
    clamped = (_unpack_nibbles(b[:, 2:18]) == 15).any(axis=1)
    steps = np.where(clamped, 1.0, 0.5)
    return steps * (d + ud) + 8 * ud + 16 * d * 2.0**-20


def q5_1_encode(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q5_1_ref in numpy, bit for bit: blocks of 32 consecutive values (in
    C order), each d = (max-min)/31 and m = min as f16, q = (uint8)((x-min)*(1/d) + 0.5)."""
    blocks = _value_blocks(x, GGML_TYPE_Q5_1)
    nb = blocks.shape[0]
    # The C loop keeps the first value that compares lowest (strict <), which decides between
    # -0.0 and +0.0; argmin/argmax pick the first occurrence too, so m's sign bit matches.
    idx = np.arange(nb)
    vmin = blocks[idx, np.argmin(blocks, axis=1)]
    vmax = blocks[idx, np.argmax(blocks, axis=1)]
    d = (vmax - vmin) / np.float32(31)
    inv = _reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (blocks - vmin[:, None]) * inv[:, None] + np.float32(0.5)
    q = scaled.astype(np.uint8)  # C truncates toward zero; values lie in [0.5, 31.5]
    bits = np.arange(32, dtype=np.uint32)
    qh = (((q.astype(np.uint32) >> 4) & 1) << bits).sum(axis=1, dtype=np.uint32)
    out = np.empty((nb, _LAYOUT[GGML_TYPE_Q5_1][2]), dtype=np.uint8)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:4] = _f16_bytes(vmin)
    out[:, 4:8] = qh.astype("<u4").view(np.uint8).reshape(nb, 4)
    out[:, 8:24] = _pack_nibbles(q)
    return out.tobytes()


def q5_1_params(raw: bytes | np.ndarray, n_elements: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block (d, m) as float32."""
    b = _byte_blocks(raw, n_elements, GGML_TYPE_Q5_1)
    return _f16_field(b, 0), _f16_field(b, 2)


def q5_1_decode(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """ggml's dequantize_row_q5_1: value = q*d + m, as a flat float32 array of n_elements."""
    b = _byte_blocks(raw, n_elements, GGML_TYPE_Q5_1)
    d, m = q5_1_params(raw, n_elements)
    qh = np.ascontiguousarray(b[:, 4:8]).view("<u4").reshape(-1, 1)
    bits = np.arange(32, dtype=np.uint32)
    q = (_unpack_nibbles(b[:, 8:24]) | (((qh >> bits) & 1) << 4)).astype(np.float32)
    return (q * d[:, None] + m[:, None]).reshape(-1)


def q5_1_error_bound(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """Per-block bound on |x - decode(encode(x))|, from the stored d and m alone.

    Encoding rounds (x - min)/d_true to the nearest of 0..31 (error <= d_true/2); storing d_true
    and min as f16 costs at most half an f16 ulp each, and q <= 31 multiplies the error on d.
    A relative 2**-20 of the block's magnitude covers the float32 arithmetic on both sides.
    """
    d, m = q5_1_params(raw, n_elements)
    d64, m64 = d.astype(np.float64), m.astype(np.float64)
    ud, um = _f16_half_ulp(d), _f16_half_ulp(m)
    return 0.5 * (d64 + ud) + 31 * ud + um + (np.abs(m64) + 32 * d64) * 2.0**-20


def q8_0_encode(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q8_0_ref in numpy, bit for bit: blocks of 32 values, d = amax/127 (stored
    as f16), q = roundf(x * (1/d)) (half away from zero) as int8."""
    blocks = _value_blocks(x, GGML_TYPE_Q8_0)
    amax = np.abs(blocks).max(axis=1)
    d = amax / np.float32(127)
    inv = _reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (blocks * inv[:, None]).astype(np.float64)  # float32 product, as in C
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)
    out = np.empty((blocks.shape[0], _LAYOUT[GGML_TYPE_Q8_0][2]), dtype=np.uint8)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def q8_0_decode(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """ggml's dequantize_row_q8_0: 32 int8 values per f16 scale."""
    b = _byte_blocks(raw, n_elements, GGML_TYPE_Q8_0)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (q * _f16_field(b, 0)[:, None]).reshape(-1)


def q8_0_error_bound(raw: bytes | np.ndarray, n_elements: int) -> np.ndarray:
    """Per-block bound on |x - decode(encode(x))| for q8_0 (ggml's quantize_row_q8_0_ref:
    d = amax/127, q = round(x/d) in -127..127, d stored as f16), from the stored d alone: rounding
    costs d_true/2, storing d as f16 half an ulp, times |q| <= 127; 2**-20 of the block's magnitude
    covers the float32 arithmetic."""
    d = _f16_field(_byte_blocks(raw, n_elements, GGML_TYPE_Q8_0), 0).astype(np.float64)
    ud = _f16_half_ulp(d)
    return 0.5 * (d + ud) + 127 * ud + 128 * d * 2.0**-20


@dataclass(frozen=True)
class Codec:
    """A quantization type in numpy: ggml's encoder (bit for bit), decoder, per-block error bound;
    name and block shape from _LAYOUT (ggml's type traits)."""

    qtype: int
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes | np.ndarray, int], np.ndarray]
    error_bound: Callable[[bytes | np.ndarray, int], np.ndarray]

    @property
    def name(self) -> str:
        return _LAYOUT[self.qtype][0]

    @property
    def block_elements(self) -> int:
        return _LAYOUT[self.qtype][1]

    @property
    def block_bytes(self) -> int:
        return _LAYOUT[self.qtype][2]


# Every quantization type weights.ggml reads and writes and verify.integrity checks: the release can
# ship exactly these (core.pins.QUANT_TYPES names them; a test keeps the two equal).
CODECS = {
    c.name: c
    for c in (
        Codec(GGML_TYPE_Q4_0, q4_0_encode, q4_0_decode, q4_0_error_bound),
        Codec(GGML_TYPE_Q5_1, q5_1_encode, q5_1_decode, q5_1_error_bound),
        Codec(GGML_TYPE_Q8_0, q8_0_encode, q8_0_decode, q8_0_error_bound),
    )
}


def codec(quant: str) -> Codec:
    try:
        return CODECS[quant]
    except KeyError:
        raise ValueError(f"no decoder for quantization type {quant!r}; known: {', '.join(CODECS)}") from None
