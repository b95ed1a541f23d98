"""binding: what can be checked without the built library (the CPU gate, argument checks)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from whisper_release.core.errors import CpuError, VerificationError
from whisper_release.runtime import binding

REQUIRED = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]


def test_missing_avx2_is_a_python_error_before_any_load(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: fpu sse2 sse4_2 avx fma f16c\n")
    # lib_dir does not even exist: the flags are checked before anything is opened.
    with pytest.raises(CpuError) as e:
        binding.load(tmp_path / "no-such-dir", required_flags=REQUIRED, cpuinfo=cpuinfo)
    msg = str(e.value)
    assert "avx2" in msg and "bmi2" in msg
    assert "avx," not in msg.split("lacks")[1].split("(")[0]  # avx is present: not named as missing


def test_missing_library_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match=r"libwhisper\.so does not exist"):
        binding.load(tmp_path, required_flags=[])


def test_not_a_library_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "libwhisper.so").write_bytes(b"not an ELF file")
    with pytest.raises(VerificationError, match="Cannot load"):
        binding.load(tmp_path, required_flags=[])


def test_structures_are_c_layout() -> None:
    # Full field-by-field comparison with the C compiler is in tests/integration/test_verify_binding.py;
    # here only what ctypes alone decides: pointers are 8 bytes and nested structs are embedded.
    assert ctypes.sizeof(ctypes.c_void_p) == 8
    names = [f[0] for f in binding.whisper_full_params._fields_]
    assert names.index("greedy") + 1 == names.index("beam_search")
    assert binding.whisper_full_params.vad_params.size == ctypes.sizeof(binding.whisper_vad_params)
