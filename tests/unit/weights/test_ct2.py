"""CTranslate2 model.bin reader: round trips, split parts, and every kind of bad file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisper_release.core.errors import ConversionError
from whisper_release.weights import ct2

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _variables(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder/conv1/weight": rng.standard_normal((4, 2, 3)).astype(np.float16),
        "encoder/layer_norm/gamma": rng.standard_normal(4).astype(np.float32),
        "decoder/layer_0/ffn/linear_0/weight": rng.integers(-128, 127, (8, 4)).astype(np.int8),
        "decoder/layer_0/ffn/linear_0/weight_scale": rng.random(8).astype(np.float32),
        "decoder/num_heads": np.array(2, dtype=np.int16),
        "decoder/alignment_layer": np.array(-1, dtype=np.int32),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
    }


def _assert_same(model: ct2.Ct2Model, want: dict[str, np.ndarray]) -> None:
    assert list(model.variables) == list(want)
    for name, arr in want.items():
        got = model.variables[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)


def test_round_trip_with_aliases(tmp_path):
    want = _variables()
    aliases = {"decoder/projection/weight": "encoder/conv1/weight"}
    path = ct2.write_model(tmp_path / "model.bin", want, aliases=aliases)
    model = ct2.read_model(path)
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    _assert_same(model, want)
    np.testing.assert_array_equal(model.get("decoder/projection/weight"), want["encoder/conv1/weight"])
    assert "decoder/projection/weight" in model
    with pytest.raises(ConversionError, match="missing"):
        model.get("encoder/nope")


@FAST
@given(cuts=st.lists(st.integers(1, 10**6), max_size=4, unique=True), seed=st.integers(0, 1000))
def test_parts_read_as_one_stream(tmp_path_factory, cuts, seed):
    d = tmp_path_factory.mktemp("parts")
    want = _variables(seed)
    blob = ct2.write_model(d / "model.bin", want).read_bytes()
    edges = sorted({c % len(blob) for c in cuts} - {0})
    pieces = [blob[a:b] for a, b in zip([0, *edges], [*edges, len(blob)], strict=True)]
    paths = []
    for i, piece in enumerate(pieces, 1):
        p = d / f"model.bin.part{i}"
        p.write_bytes(piece)
        paths.append(p)
    _assert_same(ct2.read_model(paths), want)
    if len(paths) > 1:  # wrong order must not parse into a silently different model
        with pytest.raises(ConversionError):
            m = ct2.read_model(list(reversed(paths)))
            _assert_same(m, want)


def test_bfloat16_is_widened(tmp_path):
    path = ct2.write_model(tmp_path / "model.bin", {"x": np.array([1.5, -2.0], np.float32)})
    raw = bytearray(path.read_bytes())
    # Rewrite the f32 variable as bf16 by hand: dtype id 5, 2 bytes per value (the top halves).
    head = raw.index(b"x\0") + 2 + 1 + 4
    raw[head] = 5
    raw[head + 1:head + 5] = struct.pack("<I", 4)
    values = np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16
    raw[head + 5:head + 13] = values.astype("<u2").tobytes()
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(ct2.read_model(path).variables["x"], [1.5, -2.0])


def test_truncated_file_is_a_conversion_error_at_every_cut(tmp_path):
    blob = ct2.write_model(tmp_path / "model.bin", _variables()).read_bytes()
    bad = tmp_path / "cut.bin"
    for cut in range(0, len(blob), 7):
        bad.write_bytes(blob[:cut])
        with pytest.raises(ConversionError, match=r"cut\.bin"):
            ct2.read_model(bad)


def test_bad_version_dtype_count_and_trailing_bytes(tmp_path):
    path = ct2.write_model(tmp_path / "model.bin", {"a": np.zeros(3, np.float32)})
    blob = path.read_bytes()
    bad = tmp_path / "bad.bin"

    bad.write_bytes(struct.pack("<I", 5) + blob[4:])
    with pytest.raises(ConversionError, match="format version is 5, this reader supports 6"):
        ct2.read_model(bad)

    i = blob.index(b"a\0") + 2 + 1 + 4  # name, rank, one dim -> dtype byte
    bad.write_bytes(blob[:i] + bytes([9]) + blob[i + 1:])
    with pytest.raises(ConversionError, match="dtype id 9"):
        ct2.read_model(bad)

    bad.write_bytes(blob[:i + 1] + struct.pack("<I", 8) + blob[i + 5:])
    with pytest.raises(ConversionError, match="has 8 bytes, its shape needs 12"):
        ct2.read_model(bad)

    bad.write_bytes(blob + b"\0\0")
    with pytest.raises(ConversionError, match="unexpected bytes"):
        ct2.read_model(bad)

    with pytest.raises(ConversionError, match="does not exist"):
        ct2.read_model(tmp_path / "absent.bin")
    with pytest.raises(ConversionError, match="No model.bin parts"):
        ct2.read_model([])
