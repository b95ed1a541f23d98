"""The legacy whisper ggml model file (what whisper.cpp v1.8.5 loads).

Pure format code: numpy and the standard library only, no I/O at import time. It serves the
CTranslate2 converter, the artifact integrity check and the generated benchmark models alike. The
quantized types' arithmetic (ggml's codecs, bit for bit) is weights.quants; here they are tensor types.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from whisper_release.core.errors import VerificationError
from whisper_release.layout.artifacts import GGML_MAGIC, HPARAM_ORDER
from whisper_release.weights.quants import CODECS, GGML_TYPE_Q4_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q5_0 = 6

_CODEC_OF_TYPE = {c.qtype: c for c in CODECS.values()}
TYPE_NAMES = {
    GGML_TYPE_F32: "f32",
    GGML_TYPE_F16: "f16",
    GGML_TYPE_Q5_0: "q5_0",
    **{t: c.name for t, c in _CODEC_OF_TYPE.items()},
}
# (elements per block, bytes per block), as ggml's type traits.
_BLOCKS = {
    GGML_TYPE_F32: (1, 4),
    GGML_TYPE_F16: (1, 2),
    GGML_TYPE_Q5_0: (32, 22),
    **{t: (c.block_elements, c.block_bytes) for t, c in _CODEC_OF_TYPE.items()},
}

# The header's ftype: whisper-quantize writes GGML_QNT_VERSION (2) * 1000 + ggml_ftype, the
# GGML_FTYPE_MOSTLY_* value of ggml.h (not the type id: q8_0 is type 8 but ftype 7).
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
_FTYPE_OF_QTYPE = {GGML_TYPE_Q4_0: 2, GGML_TYPE_Q5_0: 8, GGML_TYPE_Q5_1: 9, GGML_TYPE_Q8_0: 7}
FTYPE_F32 = 0
FTYPE_F16 = 1
FTYPE_Q5_1 = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + _FTYPE_OF_QTYPE[GGML_TYPE_Q5_1]  # 2009


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
