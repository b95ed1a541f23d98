"""Reader for CTranslate2's model.bin (format version 6), the weights faster-whisper uses.

The file may arrive split in parts (a package index caps file sizes): pass the parts in order and
they are read as one stream, never concatenated on disk.

Layout (little-endian; FACTS.md): u32 version, string spec name, u32 spec revision, u32 variable
count; per variable: string name, u8 rank, u32 x rank shape, u8 dtype, u32 byte count, data; then
u32 alias count and (alias, target) string pairs. A string is a u16 length (NUL included) followed
by the bytes and a NUL.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from whisper_release.core.errors import ConversionError

SUPPORTED_VERSION = 6

# CTranslate2's DataType enum as serialized in model.bin. bfloat16 has no numpy dtype: its raw
# u16 values are widened to float32 on read.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}
_BF16 = 5

# Large enough for any real variable name, small enough to catch garbage lengths early.
_MAX_NAME = 4096
_MAX_RANK = 8


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases (e.g. decoder/projection/weight)."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise ConversionError(f"Alias loop at {name!r} in {self.source}; the model file is "
                                      "corrupt, re-download it.")
            seen.add(name)
            name = self.aliases[name]
        try:
            return self.variables[name]
        except KeyError:
            raise ConversionError(
                f"Variable {name!r} is missing from {self.source}; expected a CTranslate2 Whisper model "
                f"(spec WhisperSpec), got spec {self.spec!r} — re-export it with ct2-transformers-converter."
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases


class _PartStream:
    """Sequential reads across a list of files, as if they were one."""

    def __init__(self, parts: Sequence[Path]) -> None:
        self.parts = list(parts)
        self.sizes = [p.stat().st_size for p in self.parts]
        self.total = sum(self.sizes)
        self._i = 0
        self._f: BinaryIO | None = None
        self.pos = 0

    def describe(self) -> str:
        if len(self.parts) == 1:
            return str(self.parts[0])
        return " + ".join(str(p) for p in self.parts) + " (concatenated)"

    def read(self, n: int) -> bytes:
        chunks = []
        need = n
        while need > 0 and self._i < len(self.parts):
            if self._f is None:
                self._f = self.parts[self._i].open("rb")
            b = self._f.read(need)
            if b:
                chunks.append(b)
                need -= len(b)
                self.pos += len(b)
            if need > 0:
                self._f.close()
                self._f = None
                self._i += 1
        return b"".join(chunks)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _as_paths(path_or_parts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(path_or_parts, (str, os.PathLike)):
        return [Path(path_or_parts)]
    parts = [Path(p) for p in path_or_parts]
    if not parts:
        raise ConversionError("No model.bin parts given; pass model.bin or its parts in order.")
    return parts


def read_model(path_or_parts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Ct2Model:
    """Parse a CTranslate2 model.bin (or its parts, in order) into numpy arrays.

    ConversionError, naming the file and byte offset, on a wrong version, truncation, an unknown
    dtype, a byte count that disagrees with the shape, or trailing bytes.
    """
    parts = _as_paths(path_or_parts)
    for p in parts:
        if not p.is_file():
            raise ConversionError(f"CTranslate2 model file {p} does not exist; check the path "
                                  "(model.bin or model.bin.part*).")
    s = _PartStream(parts)
    where = s.describe()

    def fail(what: str) -> ConversionError:
        return ConversionError(f"{where} is not a readable CTranslate2 model.bin: {what}; re-download "
                               "or re-export the model.")

    def take(n: int, what: str) -> bytes:
        at = s.pos
        b = s.read(n)
        if len(b) != n:
            raise fail(f"truncated at byte {at} while reading {what} (wanted {n} bytes, {len(b)} left; "
                       f"total {s.total})")
        return b

    def u32(what: str) -> int:
        return int(struct.unpack("<I", take(4, what))[0])

    def string(what: str) -> str:
        (n,) = struct.unpack("<H", take(2, f"the length of {what}"))
        if n == 0 or n > _MAX_NAME:
            raise fail(f"{what} at byte {s.pos - 2} has length {n}")
        raw = take(n, what)
        if raw[-1] != 0:
            raise fail(f"{what} at byte {s.pos - n} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"{what} at byte {s.pos - n} is not UTF-8") from None

    try:
        version = u32("the format version")
        if version != SUPPORTED_VERSION:
            raise fail(f"format version is {version}, this reader supports {SUPPORTED_VERSION}")
        spec = string("the spec name")
        revision = u32("the spec revision")
        count = u32("the variable count")
        variables: dict[str, np.ndarray] = {}
        for i in range(count):
            name = string(f"the name of variable {i}")
            rank = take(1, f"the rank of {name!r}")[0]
            if rank > _MAX_RANK:
                raise fail(f"variable {name!r} has rank {rank}")
            shape = tuple(u32(f"the shape of {name!r}") for _ in range(rank))
            dtype_id = take(1, f"the dtype of {name!r}")[0]
            if dtype_id not in DTYPES:
                raise fail(
                    f"variable {name!r} has dtype id {dtype_id}, expected one of "
                    + ", ".join(f"{k} ({v[0]})" for k, v in DTYPES.items())
                )
            dname, dtype = DTYPES[dtype_id]
            nbytes = u32(f"the byte count of {name!r}")
            n = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if nbytes != n * dtype.itemsize:
                raise fail(f"variable {name!r} ({dname} {list(shape)}) has {nbytes} bytes, its shape "
                           f"needs {n * dtype.itemsize}")
            arr = np.frombuffer(take(nbytes, f"the data of {name!r}"), dtype=dtype).reshape(shape)
            if dtype_id == _BF16:
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            variables[name] = arr
        aliases: dict[str, str] = {}
        if s.pos < s.total:
            n_alias = u32("the alias count")
            for _ in range(n_alias):
                alias = string("an alias name")
                aliases[alias] = string(f"the target of alias {alias!r}")
        if s.pos != s.total:
            raise fail(f"{s.total - s.pos} unexpected bytes after the aliases at byte {s.pos} (wrong "
                       "part order or extra part?)")
    finally:
        s.close()
    return Ct2Model(spec, revision, variables, aliases, where)


def _dtype_id(arr: np.ndarray) -> int:
    for k, (_name, dt) in DTYPES.items():
        if k != _BF16 and arr.dtype == dt:
            return k
    raise ValueError(f"no CTranslate2 dtype for numpy {arr.dtype}")


def write_model(
    path: str | os.PathLike[str],
    variables: dict[str, np.ndarray],
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    aliases: dict[str, str] | None = None,
) -> Path:
    """Write a model.bin v6 (small models for tests and fixtures; the layout read_model reads)."""

    def string(s: str) -> bytes:
        b = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(b)) + b

    out = Path(path)
    with out.open("wb") as f:
        f.write(struct.pack("<I", SUPPORTED_VERSION) + string(spec) + struct.pack("<I", revision))
        f.write(struct.pack("<I", len(variables)))
        for name, value in variables.items():
            arr = np.asarray(value)
            dt = _dtype_id(arr)
            data = np.ascontiguousarray(arr, dtype=DTYPES[dt][1]).tobytes()
            f.write(string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape))
            f.write(struct.pack("<BI", dt, len(data)) + data)
        f.write(struct.pack("<I", len(aliases or {})))
        for alias, target in (aliases or {}).items():
            f.write(string(alias) + string(target))
    return out
