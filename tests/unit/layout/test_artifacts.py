"""Layout, SHA256SUMS, manifest and ELF symbol-version reading, on real ELF files of this system."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from whisper_release.core.pins import load_pins, project_root
from whisper_release.layout import artifacts, libraries
from whisper_release.testing import require_tool

SYSTEM_LIBS = Path("/usr/lib/x86_64-linux-gnu")
# Real shared objects stand in for the built ones: the layout code reads their ELF headers.
STAND_INS = ("libstdc++.so.6", "libgomp.so.1", "libz.so.1", "libm.so.6", "libgcc_s.so.1")
QUANTS = ("q5_1", "q8_0")


def _real_elf(name: str) -> Path:
    p = (SYSTEM_LIBS / name).resolve()
    if not p.is_file():
        pytest.skip(f"{p} is not on this system")
    return p


FTYPES = {"q5_1": 2009, "q8_0": 2008}


def _ggml_header(ftype: int, n_vocab: int = 51864) -> bytes:
    """The fixed part of a whisper.cpp ggml model file: magic and the 11 int32 hparams."""
    hp = [n_vocab, 1500, 512, 8, 6, 448, 512, 8, 6, 80, ftype]
    return struct.pack("<I11i", artifacts.GGML_MAGIC, *hp)


@pytest.fixture
def build_dirs(tmp_path: Path) -> dict[str, Path]:
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    for target, src in zip(artifacts.LIBRARIES, STAND_INS, strict=True):
        (lib_dir / target).write_bytes(_real_elf(src).read_bytes())
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for i, m in enumerate(("tiny.en", "base")):
        for j, q in enumerate(QUANTS):
            (models_dir / artifacts.model_file_name(m, q)).write_bytes(
                _ggml_header(FTYPES[q], n_vocab=51864 + i) + bytes([i]) * (1000 + i + 7 * j)
            )
    pins = load_pins()
    build = {
        "profile": "offline",
        "release_version": pins.release_version,
        "quantize": list(QUANTS),
        "cmake_flags": list(pins.build.cmake_flags),
        "required_cpu_flags": list(pins.build.required_cpu_flags),
        "source_date_epoch": 1704067200,
        "source": {
            "version": "1.8.5",
            "commit": pins.source.commit,
            "tree": pins.source.tree,
            "provider": "pypi-sdist",
            "uri": "pypi:pywhispercpp==1.5.1",
        },
        "models": {"tiny.en": {"sha256": "a" * 64, "size": 5}, "base": {"sha256": "b" * 64, "size": 6}},
        "base_image": {
            "tag": "whisper-release/builder-base:bookworm-0123456789ab",
            "id": "sha256:" + "c" * 64,
        },
        "inputs": {
            "source": {
                "package": "pywhispercpp",
                "version": "1.5.1",
                "filename": "p.tar.gz",
                "sha256": "d" * 64,
            },
            "models": {
                "tiny.en": {
                    "provider": "ct2",
                    "packages": [{"name": "m-tiny", "version": "1", "sha256": "e" * 64}],
                },
                "base": {
                    "provider": "ct2",
                    "packages": [{"name": "m-base", "version": "2", "sha256": "f" * 64}],
                },
            },
        },
        "sbom": {
            "source_repository": "github.com/ggml-org/whisper.cpp",
            "source_license": "MIT",
            "model_licenses": {"tiny.en": "MIT", "base": "MIT"},
            "assets": {
                "package": "openai-whisper",
                "version": "20250625",
                "filename": "openai_whisper-20250625.tar.gz",
                "sha256": _assets_sdist(tmp_path / "sbom"),
                "license": "MIT",
                "license_file": "openai_whisper-20250625/LICENSE",
            },
            "debian": dict(pins.sbom.debian),
            "tools": [
                {"name": t.name, "version": t.version, "filename": t.filename, "sha256": t.sha256}
                for t in pins.sbom_tools
            ],
        },
    }
    build_json = tmp_path / "build.json"
    build_json.write_text(json.dumps(build))
    toolchain = tmp_path / "toolchain.txt"
    toolchain.write_text(
        "compiler=g++ (Debian 12.2.0-14) 12.2.0\ncmake=cmake version 3.25.1\n"
        "cpu_variant=-msse4.2;-mf16c;-mfma;-mbmi2;-mavx;-mavx2\n"
    )
    source = tmp_path / "source"
    (source / "ggml").mkdir(parents=True)
    (source / "LICENSE").write_text("MIT License\n\nCopyright (c) 2023-2026 The ggml authors\n")
    (source / "ggml" / "CMakeLists.txt").write_text(
        "set(GGML_VERSION_MAJOR 0)\nset(GGML_VERSION_MINOR 13)\nset(GGML_VERSION_PATCH 1)\n"
    )
    share = tmp_path / "share"
    (share / "doc" / "libgomp1").mkdir(parents=True)
    (share / "doc" / "libgomp1" / "copyright").write_text("GCC RUNTIME LIBRARY EXCEPTION\n")
    (share / "common-licenses").mkdir()
    (share / "common-licenses" / "GPL-3").write_text("GNU GENERAL PUBLIC LICENSE Version 3\n")
    dpkg = tmp_path / "dpkg.tsv"
    dpkg.write_text(
        "".join(f"{n}\t12.2.0-14+deb12u1\tamd64\tgcc-12\n" for n in pins.sbom.debian) + "zlib1g\t1\tamd64\t\n"
    )
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nID=debian\n')
    return {
        "lib_dir": lib_dir,
        "models_dir": models_dir,
        "build_json": build_json,
        "toolchain": toolchain,
        "template": project_root() / "packaging" / "README.template.md",
        "source_dir": source,
        "share_dir": share,
        "sbom_inputs": tmp_path / "sbom",
        "dpkg": dpkg,
        "os_release": os_release,
    }


def _assets_sdist(d: Path) -> str:
    """A small stand-in for the openai-whisper sdist holding its LICENSE; returns its sha256."""
    import hashlib
    import io
    import tarfile

    d.mkdir()
    path = d / "openai_whisper-20250625.tar.gz"
    data = b"MIT License\n\nCopyright (c) 2022 OpenAI\n"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("openai_whisper-20250625/LICENSE")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _organize(dirs: dict[str, Path], out: Path) -> Path:
    artifacts.organize(out=out, epoch=1704067200, **dirs)
    return out


def test_layout_matches_the_contract(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = _organize(build_dirs, tmp_path / "release_artifacts")
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "whisper_base_xeon",
        "whisper_tiny.en_xeon",
    ]
    for m in ("tiny.en", "base"):
        d = out / artifacts.model_dir_name(m)
        assert artifacts.relative_files(d) == list(artifacts.expected_files(m, QUANTS))
        for p in d.rglob("*"):
            if p.is_dir():
                continue
            assert p.is_file() and not p.is_symlink()
            st = p.stat()
            assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o644, 1704067200)
    assert artifacts.check_tree(out, ["tiny.en", "base"], QUANTS) == []


def test_sha256sums_pass_coreutils_check(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    sha256sum = require_tool("sha256sum")
    out = _organize(build_dirs, tmp_path / "ra")
    for d in out.iterdir():
        if d.is_dir():
            proc = subprocess.run(
                [sha256sum, "-c", "--strict", "SHA256SUMS"], cwd=d, capture_output=True, text=True
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout.count(": OK") == len(artifacts.expected_files("x", QUANTS)) - 1


def test_manifest_is_an_in_toto_statement_over_every_file(
    build_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = _organize(build_dirs, tmp_path / "ra")
    stmt = json.loads((out / "manifest.json").read_text())
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    files = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert [s["name"] for s in stmt["subject"]] == files
    for s in stmt["subject"]:
        assert s["digest"]["sha256"] == artifacts.sha256_file(out / s["name"])
    bd = stmt["predicate"]["buildDefinition"]
    assert bd["internalParameters"]["source_date_epoch"] == 1704067200
    assert "-DGGML_AVX2=ON" in bd["internalParameters"]["cmake_flags"]
    assert bd["internalParameters"]["compiler"].startswith("g++")
    deps = {d["name"]: d for d in bd["resolvedDependencies"]}
    assert deps["whisper.cpp"]["digest"]["gitTree"] == load_pins().source.tree
    assert deps["model:base"]["digest"] == {"sha256": "b" * 64}
    assert deps["builder-base-image"]["digest"] == {"sha256": "c" * 64}


def test_two_runs_give_identical_bytes(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    a = _organize(build_dirs, tmp_path / "a")
    os.utime(build_dirs["lib_dir"] / "libwhisper.so")  # input mtimes must not leak into the output
    b = _organize(build_dirs, tmp_path / "b")

    def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
        return {
            p.relative_to(root).as_posix(): (
                p.read_bytes() if p.is_file() else b"",
                p.stat().st_mode,
                int(p.stat().st_mtime),
            )
            for p in root.rglob("*")
        }

    assert snapshot(a) == snapshot(b)


def test_readme_reports_the_libraries_glibc(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = _organize(build_dirs, tmp_path / "ra")
    text = (out / "whisper_base_xeon" / "README.md").read_text()
    glibc, _ = artifacts.min_runtime((out / "whisper_base_xeon" / lib) for lib in artifacts.LIBRARIES)
    assert f"glibc {glibc} or" in text
    size = (out / "whisper_base_xeon" / "ggml-base-q5_1.bin").stat().st_size
    assert re.search(rf"ggml-base-q5_1\.bin\s+{size:,} bytes", text)


def test_check_tree_reports_tampering(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = _organize(build_dirs, tmp_path / "ra")
    (out / "whisper_base_xeon" / "ggml-base-q5_1.bin").write_bytes(b"corrupt")
    (out / "whisper_tiny.en_xeon" / "libgomp.so.1").unlink()
    findings = artifacts.check_tree(out, ["tiny.en", "base"], QUANTS)
    assert any("ggml-base-q5_1.bin: sha256 differs from SHA256SUMS" in f for f in findings)
    assert any("whisper_tiny.en_xeon: files" in f for f in findings)


@pytest.mark.parametrize("quant", QUANTS)
def test_missing_quantized_model_is_a_clear_error(
    build_dirs: dict[str, Path], tmp_path: Path, quant: str
) -> None:
    (build_dirs["models_dir"] / f"ggml-base-{quant}.bin").unlink()
    with pytest.raises(artifacts.LayoutError, match=f"quantized model .*ggml-base-{quant}.bin is missing"):
        _organize(build_dirs, tmp_path / "ra")
    assert not (tmp_path / "ra" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["libstdc++.so.6", "libgomp.so.1", "libz.so.1"])
def test_needed_versions_match_objdump(name: str) -> None:
    objdump = require_tool("objdump")
    lib = _real_elf(name)
    dump = subprocess.run([objdump, "-p", lib], capture_output=True, text=True, check=True).stdout
    refs = dump.split("Version References:")[1] if "Version References:" in dump else ""
    want = set(re.findall(r"^\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)$", refs, re.M))
    assert want, f"objdump found no version references in {lib}"
    assert artifacts.needed_versions(lib) == want


def test_min_runtime_takes_the_max_version() -> None:
    glibc, glibcxx = artifacts.min_runtime([_real_elf("libstdc++.so.6"), _real_elf("libz.so.1")])
    assert re.fullmatch(r"2\.\d+", glibc)
    assert glibcxx == ""  # libstdc++ defines GLIBCXX, it does not need it
    assert (
        libraries._max_version(["GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.3.4", "GLIBC_PRIVATE"], "GLIBC_")
        == "2.14"
    )


def test_not_elf_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.so"
    p.write_bytes(b"not an elf file at all")
    with pytest.raises(artifacts.LayoutError, match="not a 64-bit little-endian ELF"):
        artifacts.needed_versions(p)


def test_parse_sha256sums_rejects_garbage() -> None:
    assert artifacts.parse_sha256sums("a" * 64 + "  f.bin\n") == {"f.bin": "a" * 64}
    with pytest.raises(artifacts.LayoutError, match="line 1"):
        artifacts.parse_sha256sums("nothex  f.bin\n")


def test_script_mode_runs_standalone(build_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The organizer stage runs artifacts.py with readme.py beside it and no whisper_release package."""
    import shutil
    import sys

    d = tmp_path / "packaging"
    d.mkdir()
    src = Path(artifacts.__file__).parent
    for name in ("artifacts.py", "readme.py", "sbom.py"):
        shutil.copy(src / name, d / name)
    out = tmp_path / "release_artifacts"
    cmd = [sys.executable, "-E", "-s", str(d / "artifacts.py"), "--epoch", "1704067200", "--out", str(out)]
    for k in build_dirs:
        cmd += ["--" + k.replace("_", "-"), str(build_dirs[k])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert artifacts.check_tree(out, ["tiny.en", "base"], QUANTS) == []


def test_artifact_json_states_the_files_and_the_readme_is_rendered_from_it(
    build_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = _organize(build_dirs, tmp_path / "ra")
    d = out / "whisper_base_xeon"
    meta = json.loads((d / artifacts.METADATA).read_text())
    assert meta["schema"] == artifacts.METADATA_SCHEMA
    assert meta["model"] == {
        "name": "base",
        "hparams": dict(
            zip(artifacts.HPARAM_ORDER[:-1], [51865, 1500, 512, 8, 6, 448, 512, 8, 6, 80], strict=True)
        ),
    }
    files = {f["name"]: f for f in meta["model_files"]}
    assert [f["name"] for f in meta["model_files"] if f["primary"]] == ["ggml-base-q5_1.bin"]
    assert files["ggml-base-q8_0.bin"]["type"] == "q8_0" and files["ggml-base-q8_0.bin"]["ftype"] == 2008
    assert files["ggml-base-q8_0.bin"]["size"] == (d / "ggml-base-q8_0.bin").stat().st_size
    assert [lib["name"] for lib in meta["libraries"]] == list(artifacts.LIBRARIES)
    assert meta["required_cpu_flags"] == list(load_pins().build.required_cpu_flags)
    assert artifacts.METADATA in artifacts.parse_sha256sums((d / artifacts.SUMS).read_text())
    readme = (d / artifacts.README).read_text()
    assert readme.startswith(f"# whisper.cpp {meta['whisper_cpp']['version']}, model `base` (q5_1, q8_0)")
    assert f"glibc {meta['min_glibc']} or" in readme
    assert artifacts.check_metadata(d) == []


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["model_files"][1].update(size=5), "model_files[1].size"),
        (lambda m: m["model_files"][0].update(primary=False), "model_files[].primary"),
        (lambda m: m["model"]["hparams"].update(n_vocab=1), "model.hparams"),
        (lambda m: m["libraries"][0].update(sha256="0" * 64), "libraries[0].sha256"),
        (lambda m: m.update(schema="whisper-release/artifact/v0"), "schema"),
        (lambda m: m.pop("required_cpu_flags"), "required_cpu_flags"),
    ],
)
def test_an_edited_artifact_json_is_named_with_its_field(
    build_dirs: dict[str, Path], tmp_path: Path, edit, field: str
) -> None:
    out = _organize(build_dirs, tmp_path / "ra")
    d = out / "whisper_base_xeon"
    meta = json.loads((d / artifacts.METADATA).read_text())
    edit(meta)
    (d / artifacts.METADATA).chmod(0o644)
    (d / artifacts.METADATA).write_text(json.dumps(meta))
    assert {f[0] for f in artifacts.check_metadata(d)} == {field}
    msgs = artifacts.check_tree(out, ["tiny.en", "base"], QUANTS)
    assert any(f"artifact.json: field {field!r}" in m for m in msgs), msgs


def test_one_sha256sums_parser_refuses_paths_duplicates_and_bad_lines() -> None:
    good = "a" * 64 + "  libwhisper.so\n" + "b" * 64 + " *README.md\n"
    assert artifacts.parse_sha256sums(good) == {"libwhisper.so": "a" * 64, "README.md": "b" * 64}
    dup = "a" * 64 + "  x\n" + "b" * 64 + "  x"
    for bad in ("a" * 64 + "  ../etc/passwd", dup, "A" * 64 + "  x", "zz  x"):
        entries, problems = artifacts.read_sha256sums(bad)
        assert problems, bad
        with pytest.raises(artifacts.LayoutError, match="is not '<sha256>  <name>'"):
            artifacts.parse_sha256sums(bad)


def test_dir_names_round_trip() -> None:
    assert artifacts.model_of_dir_name(artifacts.model_dir_name("tiny.en")) == "tiny.en"
    assert artifacts.model_of_dir_name("whisper_base") is None
