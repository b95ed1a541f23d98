"""The legacy whisper ggml model file (what whisper.cpp v1.8.5 loads) and ggml's q4_0, q5_1 and q8_0 codecs.

Pure format code: numpy and the standard library only, no I/O at import time. It serves the
CTranslate2 converter, the artifact integrity check and the generated benchmark models alike.

Layout (little-endian, no padding; FACTS.md): u32 magic, 11 x i32 hparams in layout.artifacts.HPARAM_ORDER,
mel filters (i32 n_mel, i32 n_fft, f32 x n_mel*n_fft), vocab (i32 count, then u32 length + bytes
per token), then tensor records until EOF: i32 n_dims, i32 name_len, i32 ttype, i32 x n_dims dims
(innermost first, ggml's `ne`), the name, the raw data.

Shapes in this module are numpy (row-major) order, outermost first: the reverse of ggml's `ne`,
the same order as the PyTorch tensors convert-pt-to-ggml.py writes.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from whisper_release.core.errors import VerificationError
from whisper_release.layout.artifacts import GGML_MAGIC, HPARAM_ORDER

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q5_0 = 6
GGML_TYPE_Q5_1 = 7
GGML_TYPE_Q8_0 = 8

TYPE_NAMES = {
    GGML_TYPE_F32: "f32",
    GGML_TYPE_F16: "f16",
    GGML_TYPE_Q4_0: "q4_0",
    GGML_TYPE_Q5_0: "q5_0",
    GGML_TYPE_Q5_1: "q5_1",
    GGML_TYPE_Q8_0: "q8_0",
}
# (elements per block, bytes per block), as ggml's type traits.
_BLOCKS = {
    GGML_TYPE_F32: (1, 4),
    GGML_TYPE_F16: (1, 2),
    GGML_TYPE_Q4_0: (32, 18),  # f16 d, 16 bytes of nibbles
    GGML_TYPE_Q5_0: (32, 22),
    GGML_TYPE_Q5_1: (32, 24),  # f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles
    GGML_TYPE_Q8_0: (32, 34),  # f16 d, 32 int8
}

# The header's ftype: whisper-quantize writes GGML_QNT_VERSION (2) * 1000 + ggml_ftype, the
# GGML_FTYPE_MOSTLY_* value of ggml.h (not the type id: q8_0 is type 8 but ftype 7).
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
_FTYPE_OF_QTYPE = {GGML_TYPE_Q4_0: 2, GGML_TYPE_Q5_0: 8, GGML_TYPE_Q5_1: 9, GGML_TYPE_Q8_0: 7}
FTYPE_F32 = 0
FTYPE_F16 = 1
FTYPE_Q5_1 = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + _FTYPE_OF_QTYPE[GGML_TYPE_Q5_1]  # 2009

QK5_1, Q5_1_BLOCK_BYTES = _BLOCKS[GGML_TYPE_Q5_1]

# Tensors whisper-quantize leaves alone even though they are 2-D (examples/quantize/quantize.cpp).
QUANTIZE_SKIP = (
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
)

# Sanity limits for reading untrusted files: whisper.cpp's own tensors have at most 3 dims and
# names far shorter than this, so anything beyond is corruption, not a model.
_MAX_DIMS = 4
_MAX_NAME = 512


def ftype_for(qtype: int) -> int:
    """The header ftype whisper-quantize writes for a quantization type (q5_1 -> 2009)."""
    return GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + _FTYPE_OF_QTYPE[qtype]


def type_name(ttype: int) -> str:
    return TYPE_NAMES.get(ttype, f"type{ttype}")


def tensor_nbytes(ttype: int, shape: Sequence[int]) -> int:
    """Bytes of a tensor's data; block types need the innermost dim to be a multiple of 32."""
    if ttype not in _BLOCKS:
        raise ValueError(f"unsupported ggml tensor type {ttype}")
    blck, size = _BLOCKS[ttype]
    n = 1
    for d in shape:
        n *= int(d)
    inner = int(shape[-1]) if len(shape) else 1
    if inner % blck:
        raise ValueError(f"{type_name(ttype)} needs the innermost dim to be a multiple of {blck}, got "
                         f"shape {tuple(shape)}")
    return n // blck * size


# ---- header --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgmlHeader:
    path: Path
    hparams: dict[str, int]  # in HPARAM_ORDER
    n_mel: int
    n_fft: int
    n_vocab_tokens: int
    mel_offset: int  # first f32 of the filters
    vocab_offset: int  # the i32 token count
    tensor_offset: int  # first tensor record
    file_size: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ttype: int
    shape: tuple[int, ...]  # numpy order (outermost first)
    data_offset: int
    nbytes: int

    @property
    def ne(self) -> tuple[int, ...]:
        """ggml's dims, innermost first, as stored in the file."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _bad(path: Path, what: str) -> VerificationError:
    return VerificationError(
        f"{path} is not a valid whisper ggml model file: {what}; re-create it (convert or fetch again)."
    )


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _bad(path, f"truncated while reading {what} at byte {f.tell()} (wanted {n} bytes, got "
            f"{len(b)})")
    return b


def _parse_header(
    f: BinaryIO, path: Path, file_size: int, want_vocab: bool
) -> tuple[GgmlHeader, list[bytes]]:
    magic = struct.unpack("<I", _read_exact(f, 4, path, "the magic"))[0]
    if magic != GGML_MAGIC:
        raise _bad(path, f"magic is 0x{magic:08x}, expected 0x{GGML_MAGIC:08x} ('ggml')")
    values = struct.unpack("<11i", _read_exact(f, 44, path, "the hparams"))
    hparams = dict(zip(HPARAM_ORDER, values, strict=True))
    n_mel, n_fft = struct.unpack("<2i", _read_exact(f, 8, path, "the mel filter dims"))
    if n_mel < 0 or n_fft < 0 or n_mel * n_fft * 4 > file_size:
        raise _bad(path, f"mel filter dims {n_mel}x{n_fft} do not fit in the file")
    mel_offset = f.tell()
    f.seek(n_mel * n_fft * 4, io.SEEK_CUR)
    vocab_offset = f.tell()
    (count,) = struct.unpack("<i", _read_exact(f, 4, path, "the vocab size"))
    if count < 0 or count * 4 > file_size:
        raise _bad(path, f"vocab count {count} does not fit in the file")
    tokens: list[bytes] = []
    for i in range(count):
        (n,) = struct.unpack("<I", _read_exact(f, 4, path, f"the length of token {i}"))
        if n > file_size:
            raise _bad(path, f"token {i} claims {n} bytes")
        if want_vocab:
            tokens.append(_read_exact(f, n, path, f"token {i}"))
        else:
            f.seek(n, io.SEEK_CUR)
    tensor_offset = f.tell()
    if tensor_offset > file_size:
        raise _bad(path, f"the header runs past the end of the file ({tensor_offset} > {file_size} bytes)")
    header = GgmlHeader(
        path, hparams, n_mel, n_fft, count, mel_offset, vocab_offset, tensor_offset, file_size
    )
    return header, tokens


def read_header(path: str | os.PathLike[str]) -> GgmlHeader:
    """Parse magic, hparams, mel filter dims and vocab count; VerificationError if malformed."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb", buffering=1 << 20) as f:
        return _parse_header(f, p, size, want_vocab=False)[0]


def read_vocab(path: str | os.PathLike[str]) -> list[bytes]:
    p = Path(path)
    with p.open("rb", buffering=1 << 20) as f:
        return _parse_header(f, p, p.stat().st_size, want_vocab=True)[1]


def read_mel_filters(path: str | os.PathLike[str]) -> np.ndarray:
    h = read_header(path)
    with Path(path).open("rb") as f:
        f.seek(h.mel_offset)
        raw = f.read(h.n_mel * h.n_fft * 4)
    return np.frombuffer(raw, dtype="<f4").reshape(h.n_mel, h.n_fft).copy()


def iter_tensors(path: str | os.PathLike[str]) -> Iterator[TensorInfo]:
    """Tensor records in file order, with data offsets; reads headers only, never the data."""
    p = Path(path)
    header = read_header(p)
    size = header.file_size
    with p.open("rb") as f:
        f.seek(header.tensor_offset)
        while True:
            pos = f.tell()
            head = f.read(12)
            if not head:
                return
            if len(head) != 12:
                raise _bad(p, f"a tensor record at byte {pos} is cut short ({len(head)} of 12 bytes)")
            n_dims, name_len, ttype = struct.unpack("<3i", head)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _bad(p, f"the tensor record at byte {pos} has n_dims {n_dims} (expected "
                    f"1..{_MAX_DIMS})")
            if not 1 <= name_len <= _MAX_NAME:
                raise _bad(p, f"the tensor record at byte {pos} has a name length of {name_len}")
            if ttype not in _BLOCKS:
                raise _bad(p, f"the tensor record at byte {pos} has unknown type id {ttype}")
            ne = struct.unpack(f"<{n_dims}i", _read_exact(f, 4 * n_dims, p, "tensor dims"))
            name_b = _read_exact(f, name_len, p, "a tensor name")
            try:
                name = name_b.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(p, f"the tensor name at byte {pos} is not UTF-8") from None
            shape = tuple(reversed(ne))
            if any(d <= 0 for d in shape):
                raise _bad(p, f"tensor {name!r} has dims {list(ne)}")
            try:
                nbytes = tensor_nbytes(ttype, shape)
            except ValueError as e:
                raise _bad(p, f"tensor {name!r}: {e}") from None
            data_offset = f.tell()
            if data_offset + nbytes > size:
                raise _bad(
                    p,
                    f"tensor {name!r} needs {nbytes} bytes at byte {data_offset} but the file has "
                    f"{size} bytes (truncated)",
                )
            yield TensorInfo(name, ttype, shape, data_offset, nbytes)
            f.seek(data_offset + nbytes)


def read_tensor_bytes(path: str | os.PathLike[str], info: TensorInfo) -> bytes:
    with Path(path).open("rb") as f:
        f.seek(info.data_offset)
        raw = f.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise _bad(Path(path), f"tensor {info.name!r} is truncated")
    return raw


def read_tensor(path: str | os.PathLike[str], info: TensorInfo) -> np.ndarray:
    """The tensor's values in `info.shape`: float32/float16 as stored; a type of CODECS decoded to float32."""
    raw = read_tensor_bytes(path, info)
    if info.ttype == GGML_TYPE_F32:
        out = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif info.ttype == GGML_TYPE_F16:
        out = np.frombuffer(raw, dtype="<f2").astype(np.float16)
    elif info.ttype in _CODEC_OF_TYPE:
        out = _CODEC_OF_TYPE[info.ttype].decode(raw, info.n_elements)
    else:
        raise _bad(Path(path), f"tensor {info.name!r} has type {type_name(info.ttype)}, which this "
            "reader does not decode")
    return out.reshape(info.shape)


# ---- what whisper.cpp loads ----------------------------------------------------------------------


def _block_tensors(prefix: str, attn: str, state: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.{attn}.query.weight", (state, state)),
        (f"{prefix}.{attn}.query.bias", (state,)),
        (f"{prefix}.{attn}.key.weight", (state, state)),
        (f"{prefix}.{attn}.value.weight", (state, state)),
        (f"{prefix}.{attn}.value.bias", (state,)),
        (f"{prefix}.{attn}.out.weight", (state, state)),
        (f"{prefix}.{attn}.out.bias", (state,)),
        (f"{prefix}.{attn}_ln.weight", (state,)),
        (f"{prefix}.{attn}_ln.bias", (state,)),
    ]


def _mlp_tensors(prefix: str, state: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.mlp.0.weight", (4 * state, state)),
        (f"{prefix}.mlp.0.bias", (4 * state,)),
        (f"{prefix}.mlp.2.weight", (state, 4 * state)),
        (f"{prefix}.mlp.2.bias", (state,)),
        (f"{prefix}.mlp_ln.weight", (state,)),
        (f"{prefix}.mlp_ln.bias", (state,)),
    ]


def tensor_shapes(hparams: Mapping[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor whisper.cpp v1.8.5 creates (src/whisper.cpp, whisper_model_load), in the order
    of OpenAI's state dict (the order convert-pt-to-ggml.py writes), with numpy-order shapes."""
    a_state, a_ctx, a_layer = hparams["n_audio_state"], hparams["n_audio_ctx"], hparams["n_audio_layer"]
    t_state, t_ctx, t_layer = hparams["n_text_state"], hparams["n_text_ctx"], hparams["n_text_layer"]
    out: list[tuple[str, tuple[int, ...]]] = [
        ("encoder.positional_embedding", (a_ctx, a_state)),
        ("encoder.conv1.weight", (a_state, hparams["n_mels"], 3)),
        ("encoder.conv1.bias", (a_state, 1)),
        ("encoder.conv2.weight", (a_state, a_state, 3)),
        ("encoder.conv2.bias", (a_state, 1)),
    ]
    for i in range(a_layer):
        out += _block_tensors(f"encoder.blocks.{i}", "attn", a_state)
        out += _mlp_tensors(f"encoder.blocks.{i}", a_state)
    out += [("encoder.ln_post.weight", (a_state,)), ("encoder.ln_post.bias", (a_state,))]
    out += [
        ("decoder.positional_embedding", (t_ctx, t_state)),
        ("decoder.token_embedding.weight", (hparams["n_vocab"], t_state)),
    ]
    for i in range(t_layer):
        out += _block_tensors(f"decoder.blocks.{i}", "attn", t_state)
        out += _block_tensors(f"decoder.blocks.{i}", "cross_attn", t_state)
        out += _mlp_tensors(f"decoder.blocks.{i}", t_state)
    out += [("decoder.ln.weight", (t_state,)), ("decoder.ln.bias", (t_state,))]
    return out


def f16_file_type(name: str, shape: Sequence[int]) -> int:
    """The type convert-pt-to-ggml.py gives a tensor in an f16 file: f32 for 1-D tensors, the
    conv biases and the positional embeddings, f16 for everything else."""
    if len(shape) < 2 or name in QUANTIZE_SKIP:
        return GGML_TYPE_F32
    return GGML_TYPE_F16


def quantized_file_type(name: str, shape: Sequence[int], qtype: int = GGML_TYPE_Q5_1) -> int:
    """The type whisper-quantize gives a tensor of an f16 file: every 2-D tensor not in its skip
    list is quantized (token embedding included); conv weights (3-D) stay f16; the rest f32."""
    if len(shape) == 2 and name not in QUANTIZE_SKIP:
        return qtype
    return f16_file_type(name, shape)


def expected_inventory(
    hparams: Mapping[str, int], quantized: bool, qtype: int = GGML_TYPE_Q5_1
) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (ttype, numpy-order shape) of every tensor whisper.cpp loads, in file order; the
    types are those of an f16 file, or of whisper-quantize's output when `quantized`."""
    inv: dict[str, tuple[int, tuple[int, ...]]] = {}
    all_f32 = not quantized and hparams.get("ftype", FTYPE_F16) % GGML_QNT_VERSION_FACTOR == FTYPE_F32
    for name, shape in tensor_shapes(hparams):
        if all_f32:
            ttype = GGML_TYPE_F32
        elif quantized:
            ttype = quantized_file_type(name, shape, qtype)
        else:
            ttype = f16_file_type(name, shape)
        inv[name] = (ttype, shape)
    return inv


def expected_file_size(hparams: Mapping[str, int], n_mel: int, n_fft: int, vocab_bytes: int, n_tokens: int,
                       quantized: bool = False, qtype: int = GGML_TYPE_Q5_1) -> int:
    """Exact size of a model file with these hparams, mel dims and vocab (sum of token lengths)."""
    size = 4 + 44 + 8 + 4 * n_mel * n_fft + 4 + 4 * n_tokens + vocab_bytes
    for name, (ttype, shape) in expected_inventory(hparams, quantized, qtype).items():
        size += 12 + 4 * len(shape) + len(name.encode()) + tensor_nbytes(ttype, shape)
    return size


# ---- q4_0 / q5_1 / q8_0 codecs -------------------------------------------------------------------
# Each encoder is ggml's quantize_row_<type>_ref (ggml/src/ggml-quants.c) in numpy, bit for bit: that is
# what whisper-quantize runs (examples/common-ggml.cpp calls ggml_quantize_chunk with no importance
# matrix, and quantize_<type> then takes the _ref path). Each bound is derived from the arithmetic of
# its encoder and computed from the stored block alone, so a file can be checked against its f16
# source without trusting the encoder that wrote it.


def _value_blocks(x: np.ndarray, qtype: int) -> np.ndarray:
    """x as float32 rows of one block each (C order), as ggml walks a row."""
    qk = _BLOCKS[qtype][0]
    v = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if v.size % qk:
        raise ValueError(f"{type_name(qtype)} needs a multiple of {qk} values, got {v.size}")
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
    qk, size = _BLOCKS[qtype]
    buf = _as_u8(raw)
    if n_elements % qk or buf.size != n_elements // qk * size:
        raise ValueError(f"{type_name(qtype)} data of {buf.size} bytes does not hold {n_elements} values")
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
    # x*id lies in [-8, 8] up to float32 rounding, so scaled is in [0.5, 16.5]: the int8 cast truncates
    # and only the value of the largest magnitude's opposite (t >= 7.5) reaches 16, clamped to 15.
    q = np.minimum(scaled.astype(np.int8), 15).astype(np.uint8)
    out = np.empty((nb, _BLOCKS[GGML_TYPE_Q4_0][1]), dtype=np.uint8)
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
    out = np.empty((nb, _BLOCKS[GGML_TYPE_Q5_1][1]), dtype=np.uint8)
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
    out = np.empty((blocks.shape[0], _BLOCKS[GGML_TYPE_Q8_0][1]), dtype=np.uint8)
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
    the block shape is ggml's type traits (_BLOCKS)."""

    qtype: int
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes | np.ndarray, int], np.ndarray]
    error_bound: Callable[[bytes | np.ndarray, int], np.ndarray]

    @property
    def name(self) -> str:
        return type_name(self.qtype)

    @property
    def block_elements(self) -> int:
        return _BLOCKS[self.qtype][0]

    @property
    def block_bytes(self) -> int:
        return _BLOCKS[self.qtype][1]


# Every quantization type this module reads, writes and checks: the release can ship exactly these
# (core.pins.QUANT_TYPES names them; a test keeps the two equal).
CODECS = {
    c.name: c
    for c in (
        Codec(GGML_TYPE_Q4_0, q4_0_encode, q4_0_decode, q4_0_error_bound),
        Codec(GGML_TYPE_Q5_1, q5_1_encode, q5_1_decode, q5_1_error_bound),
        Codec(GGML_TYPE_Q8_0, q8_0_encode, q8_0_decode, q8_0_error_bound),
    )
}
_CODEC_OF_TYPE = {c.qtype: c for c in CODECS.values()}


def codec(quant: str) -> Codec:
    try:
        return CODECS[quant]
    except KeyError:
        raise ValueError(f"no decoder for quantization type {quant!r}; known: {', '.join(CODECS)}") from None


# ---- writer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawTensor:
    """Pre-encoded tensor data, written verbatim (checked against ttype and shape)."""

    name: str
    ttype: int
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class WrittenModel:
    path: Path
    size: int
    sha256: str
    n_tensors: int


TensorSource = RawTensor | tuple[str, int, np.ndarray]


def _encode(name: str, ttype: int, arr: np.ndarray) -> bytes:
    if ttype == GGML_TYPE_F32:
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if ttype == GGML_TYPE_F16:
        return np.ascontiguousarray(arr, dtype="<f2").tobytes()
    c = _CODEC_OF_TYPE.get(ttype)
    if c is not None:
        if arr.ndim == 0 or arr.shape[-1] % c.block_elements:
            raise ValueError(f"tensor {name!r} of shape {arr.shape} cannot be {c.name} (innermost dim not a "
                             f"multiple of {c.block_elements})")
        return c.encode(arr)
    raise ValueError(f"tensor {name!r}: the writer does not encode type {type_name(ttype)}")


def header_bytes(hparams: Mapping[str, int], mel: np.ndarray, vocab: Sequence[bytes]) -> bytes:
    mel = np.asarray(mel, dtype="<f4")
    if mel.ndim != 2:
        raise ValueError(f"mel filters must be 2-D (n_mel, n_fft), got shape {mel.shape}")
    parts = [struct.pack("<I", GGML_MAGIC), struct.pack("<11i", *(int(hparams[k]) for k in HPARAM_ORDER))]
    parts.append(struct.pack("<2i", *mel.shape))
    parts.append(np.ascontiguousarray(mel).tobytes())
    parts.append(struct.pack("<i", len(vocab)))
    for tok in vocab:
        parts.append(struct.pack("<I", len(tok)))
        parts.append(bytes(tok))
    return b"".join(parts)


def tensor_record(name: str, ttype: int, shape: Sequence[int], data: bytes) -> bytes:
    """One tensor record: the 12-byte head, dims innermost first, the name; then the data."""
    want = tensor_nbytes(ttype, shape)
    if len(data) != want:
        raise ValueError(f"tensor {name!r}: {len(data)} bytes of data, {type_name(ttype)} "
                         f"{tuple(shape)} needs {want}")
    nb = name.encode("utf-8")
    head = struct.pack("<3i", len(shape), len(nb), ttype) + struct.pack(f"<{len(shape)}i", *reversed(shape))
    return head + nb + data


def write_model(
    path: str | os.PathLike[str],
    hparams: Mapping[str, int],
    mel: np.ndarray,
    vocab: Sequence[bytes],
    tensors: Iterable[TensorSource],
) -> WrittenModel:
    """Write a model file atomically, streaming `tensors` one at a time (never all in memory).

    Each item is a RawTensor or (name, ttype, array): arrays are cast (f32/f16) or encoded (CODECS).
    The temp file beside `path` is removed on any failure, so no half-written model remains.
    """
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    count = 0
    try:
        with tmp.open("wb") as f:

            def put(b: bytes) -> None:
                nonlocal size
                f.write(b)
                digest.update(b)
                size += len(b)

            put(header_bytes(hparams, mel, vocab))
            for item in tensors:
                if isinstance(item, RawTensor):
                    put(tensor_record(item.name, item.ttype, item.shape, item.data))
                else:
                    name, ttype, arr = item
                    arr = np.asarray(arr)
                    put(tensor_record(name, ttype, arr.shape, _encode(name, ttype, arr)))
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenModel(out, size, digest.hexdigest(), count)
