"""Each verify check fails for the right reason: copies of the built artifacts are corrupted one way
each, the real suite (verify/) runs on the copy, and its failure must name the file, wanted and got.

Needs built artifacts: $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts (CI builds first).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_release.core.pins import QUANT_TYPES, load_pins, project_root
from whisper_release.testing import require_tool, unavailable
from whisper_release.weights import ggml, quants

pytestmark = pytest.mark.integration

ROOT = project_root()


@pytest.fixture(scope="module")
def built() -> tuple[Path, Path]:
    """(release_artifacts root, its smallest whisper_<model>_xeon dir)."""
    env = os.environ.get("WHISPER_RELEASE_ARTIFACTS")
    root = Path(env) if env else ROOT / "dist" / "release_artifacts"
    dirs = sorted(root.glob("whisper_*_xeon"), key=lambda d: sum(p.stat().st_size for p in d.iterdir()))
    if not dirs:
        unavailable(f"no built artifacts under {root}; run `invoke build` (or set WHISPER_RELEASE_ARTIFACTS)")
    return root, dirs[0]


@pytest.fixture
def copy(built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    src_root, src_dir = built
    root = tmp_path / "release_artifacts"
    root.mkdir()
    shutil.copyfile(src_root / "manifest.json", root / "manifest.json")
    shutil.copytree(src_dir, root / src_dir.name, symlinks=False)
    return root, root / src_dir.name


def _verify(root: Path, tmp_path: Path, select: str) -> str:
    """Run the acceptance suite on `root` (only the tests matching `select`); return its output."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "verify"),
            "-p",
            "no:cacheprovider",
            "-q",
            "-rN",
            "--artifacts",
            str(root),
            "--report",
            str(tmp_path / "report.json"),
            "-k",
            select,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={k: v for k, v in os.environ.items() if k not in ("CI", "WHISPER_RELEASE_STRICT")},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"verify passed on a corrupted copy:\n{out}"
    return out


def _model(d: Path) -> Path:
    (m,) = d.glob("ggml-*-q5_1.bin")
    return m


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_untouched_copy_passes(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = copy
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "verify"),
            "-p",
            "no:cacheprovider",
            "-q",
            "--artifacts",
            str(root),
            "--report",
            str(tmp_path / "r.json"),
            "-k",
            "files or isa or model_file or loads_alone",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# type -> (byte within block 0, xor mask, elements pushed outside the bound, first of them), for every
# type the release may ship (core.pins.QUANT_TYPES); the test runs for the shipped ones:
# q5_1: the first qs byte holds elements 0 and 16, both nibbles move by 8 steps of d;
# q8_0: after the 2-byte f16 scale, element 5 moves by 32 steps of d;
# q4_0: after the 2-byte f16 scale, the first byte holds elements 0 and 16, both move by 8 steps of d.
FLIPS = {"q5_1": (8, 0x88, 2, 0), "q8_0": (2 + 5, 0x20, 1, 5), "q4_0": (2, 0x88, 2, 0)}


def test_every_shippable_type_has_a_flip() -> None:
    assert set(FLIPS) == set(QUANT_TYPES)


@pytest.mark.parametrize("quant", load_pins().quantizations)
def test_flipped_byte_in_a_model_block(copy: tuple[Path, Path], tmp_path: Path, quant: str) -> None:
    at, mask, n_out, first = FLIPS[quant]
    root, d = copy
    (model,) = d.glob(f"ggml-*-{quant}.bin")
    good = _sha(model)
    info = next(t for t in ggml.iter_tensors(model) if t.ttype == quants.codec(quant).qtype)
    with model.open("r+b") as f:
        f.seek(info.data_offset + at)
        b = f.read(1)[0]
        f.seek(info.data_offset + at)
        f.write(bytes([b ^ mask]))
    out = _verify(root, tmp_path, "numerics or model_file")
    assert (
        f"{model}: {quant} tensor {info.name}: wanted every element within its block's quantisation bound, "
        f"got {n_out} element(s) outside it, first in block 0 (file byte {info.data_offset}) element {first}"
        in out
    )
    assert f"{model}: sha256: wanted {good} (SHA256SUMS), got {_sha(model)}" in out


def test_truncated_model(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, d = copy
    model = _model(d)
    size = model.stat().st_size
    with model.open("r+b") as f:
        f.truncate(size - 4096)
    out = _verify(root, tmp_path, "model_file")
    assert (
        f"{model}: file length: wanted {size} bytes (header + every tensor), got {size - 4096} bytes" in out
    )
    assert f"{model}: tensor records: wanted complete tensor records up to the end of the file, got " in out


def test_wrong_hparam(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, d = copy
    model = _model(d)
    head = ggml.read_header(model).hparams["n_text_head"]
    with model.open("r+b") as f:
        f.seek(4 + 4 * 7)  # magic, then hparams in order: n_text_head is the 8th
        f.write((head + 1).to_bytes(4, "little"))
    out = _verify(root, tmp_path, "model_file")
    assert f"{model}: hparam n_text_head: wanted {head}, got {head + 1}" in out


def test_library_with_an_avx512_instruction(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, d = copy
    gcc = require_tool("gcc", "builds the planted library")
    src = tmp_path / "evex.S"
    # vaddps %zmm1,%zmm0,%zmm0 as raw bytes: no compiler flag would reveal it.
    src.write_text(
        ".text\n.globl f\nf:\n.byte 0x62,0xf1,0x7c,0x48,0x58,0xc1\nret\n"
        '.section .note.GNU-stack,"",@progbits\n'
    )
    planted = d / "libgomp.so.1"
    subprocess.run([gcc, "-shared", "-nostdlib", str(src), "-o", str(planted)], check=True)
    out = _verify(root, tmp_path, "isa_audit")
    assert re.search(
        re.escape(f"{planted}: instruction at offset ")
        + r"0x[0-9a-f]+ \(\S+\): wanted only features of x86-64 baseline \+ [^,]+(, [^,]+)*, got "
        + re.escape("`vaddps zmm0,zmm0,zmm1`, which needs AVX512F"),
        out,
    ), out


def test_missing_ggml_libraries(copy: tuple[Path, Path], tmp_path: Path) -> None:
    """ggml-base and every CPU library (the linked one, or each runtime module) removed."""
    root, d = copy
    cpu_libs = sorted(d.glob("libggml-cpu*.so*"))
    assert cpu_libs
    for gone in (d / "libggml-base.so.0", *cpu_libs):
        gone.unlink()
    out = _verify(root, tmp_path, "files or loads_alone or isa_audit")
    for gone in (d / "libggml-base.so.0", *cpu_libs):
        assert f"{gone}: shipped file: wanted present, got missing" in out
        assert f"{gone}: file listed in SHA256SUMS: wanted present, got missing" in out
    b = load_pins().build
    floor = f"libggml-cpu-{b.cpu_variants[0]}.so" if b.runtime_dispatch else "libggml-cpu.so.0"
    assert f"{d / floor}: ggml CPU backend: wanted present, got missing" in out
    # The loader's own words from the clean subprocess: which library it could not find.
    assert re.search(
        rf"{re.escape(str(d / 'libwhisper.so'))}: wanted a ctypes load with no LD_LIBRARY_PATH, "
        r"got: Cannot load .*libggml-base\.so\.0: cannot open shared object file",
        out,
    ), out


def test_edited_sha256sums(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, d = copy
    sums = d / "SHA256SUMS"
    lib = d / "libwhisper.so"
    real = _sha(lib)
    fake = hashlib.sha256(b"not the library").hexdigest()
    sums.write_text(sums.read_text().replace(real, fake))
    out = _verify(root, tmp_path, "files")
    assert f"{lib}: sha256: wanted {fake} (SHA256SUMS), got {real}" in out
    assert f"{sums}: sha256: wanted " in out and "(manifest.json)" in out


def test_removed_licence_text(copy: tuple[Path, Path], tmp_path: Path) -> None:
    root, d = copy
    gone = d / "licenses" / "GPL-3"
    gone.unlink()
    out = _verify(root, tmp_path, "sbom")
    sbom = d / "sbom.cdx.json"
    assert f"{gone}: file listed in sbom.cdx.json: wanted present, got missing" in out
    libgomp = "libgomp.so.1 (GPL-3.0-or-later WITH GCC-exception-3.1)"
    assert f"{gone}: licence text of {libgomp}: wanted present, got missing" in out
    assert (
        f"{sbom}: licence text of GPL-3.0-or-later (named by g++-12, gcc-12, libgomp.so.1, libgomp1): "
        "wanted a text shipped in the artifact, got none (licenses/GPL-3 missing)"
    ) in out


def test_library_differing_from_its_sbom_entry(copy: tuple[Path, Path], tmp_path: Path) -> None:
    """A library replaced, with SHA256SUMS and the manifest rewritten to match: only the SBOM still
    records the built bytes, so only its check may fail, and it names the library."""
    root, d = copy
    lib = d / "libggml-base.so.0"
    built = _sha(lib)
    with lib.open("ab") as f:
        f.write(b"\0")
    now = _sha(lib)
    meta = d / "artifact.json"
    meta_before = _sha(meta)
    meta.write_text(meta.read_text().replace(built, now))
    _rehash(root, d, {built: now, meta_before: _sha(meta)})
    out = _verify(root, tmp_path, "files or sbom")
    assert f"{lib}: sha256: wanted {built} (sbom.cdx.json), got {now}" in out
    assert "_ test_files_sha256sums_manifest_and_metadata[" not in out, out


def _rehash(root: Path, d: Path, replaced: dict[str, str]) -> None:
    """Rewrite SHA256SUMS and the manifest as a careless re-packer would: the new digests everywhere."""
    sums = d / "SHA256SUMS"
    before = _sha(sums)
    text = sums.read_text()
    for old, new in replaced.items():
        text = text.replace(old, new)
    sums.write_text(text)
    manifest = root / "manifest.json"
    text = manifest.read_text().replace(before, _sha(sums))
    for old, new in replaced.items():
        text = text.replace(old, new)
    manifest.write_text(text)


def test_edited_artifact_json_names_the_file_and_the_field(copy: tuple[Path, Path], tmp_path: Path) -> None:
    """artifact.json edited (a model file's size) with SHA256SUMS and the manifest made to agree: the
    metadata check still compares every stated fact with the files, and names file and field."""
    root, d = copy
    meta = d / "artifact.json"
    before = _sha(meta)
    data = json.loads(meta.read_text())
    data["model_files"][0]["size"] += 1
    meta.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    _rehash(root, d, {before: _sha(meta)})
    out = _verify(root, tmp_path, "files_sha256sums")
    assert f"{meta}: field 'model_files[0].size': wanted " in out, out
    assert f"{meta}: sha256" not in out  # the sums agree: only the fact it states is wrong
