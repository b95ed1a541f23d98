"""The SBOM and licence texts the organizer writes, read back and checked as verify and `info` do.

The artifacts here are the organizer's real output over stand-in inputs (test_artifacts.build_dirs:
real ELF files, small model files, small licence texts); the SBOM is written and schema-validated
by the real cyclonedx-python-lib.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_artifacts import QUANTS, build_dirs  # noqa: F401  (a fixture, used by name)

from whisper_release import cli
from whisper_release.layout import artifacts, sbom
from whisper_release.verify.sbom import check_sbom

DIRS = ("whisper_base_xeon", "whisper_tiny.en_xeon")


@pytest.fixture
def built(build_dirs: dict[str, Path], tmp_path: Path) -> Path:  # noqa: F811
    out = tmp_path / "release_artifacts"
    artifacts.organize(out=out, epoch=1704067200, **build_dirs)
    return out


def _sbom(d: Path) -> dict:
    return json.loads((d / sbom.SBOM).read_text())


def test_every_file_is_a_component_and_the_sbom_validates(built: Path) -> None:
    for name in DIRS:
        d = built / name
        assert check_sbom(d) == []
        doc = _sbom(d)
        assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
        files = {c["name"]: c for c in doc["components"] if c["type"] == "file"}
        assert sorted(files) == [n for n in artifacts.relative_files(d) if n not in ("SHA256SUMS", sbom.SBOM)]
        for rel, c in files.items():
            assert sbom.sha256_of(c) == artifacts.sha256_file(d / rel)
            assert c["purl"].startswith(f"pkg:generic/whisper-release/{name}@")
        assert files["libgomp.so.1"]["licenses"] == [
            {"expression": "GPL-3.0-or-later WITH GCC-exception-3.1"}
        ]
        inputs = {c["name"]: c for c in doc["components"] if c["type"] != "file"}
        assert inputs["whisper.cpp"]["purl"].startswith("pkg:github/ggml-org/whisper.cpp@f24588a")
        assert inputs["libgomp1"]["purl"] == (
            "pkg:deb/debian/libgomp1@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
        )
        assert inputs["gcc-12"]["scope"] == "excluded"  # built it, not shipped
        assert sbom.sha256_of(inputs["pywhispercpp"]) == "d" * 64
        assert (
            sbom.sha256_of(inputs["openai-whisper"])
            == json.loads((built.parent / "build.json").read_text())["sbom"]["assets"]["sha256"]
        )
        tools = {t["name"] for t in doc["metadata"]["tools"]["components"]}
        assert "cyclonedx-python-lib" in tools
    # Each artifact's weights come from its own packages.
    names = {c["name"] for c in _sbom(built / "whisper_base_xeon")["components"]}
    assert "m-base" in names and "m-tiny" not in names


def test_serial_number_and_timestamp_come_from_the_content(built: Path) -> None:
    doc = _sbom(built / "whisper_base_xeon")
    assert doc["metadata"]["timestamp"] == "2024-01-01T00:00:00+00:00"
    a = sbom.Part("file:x", "x", "file", sha256="0" * 64)
    b = sbom.Part("file:x", "x", "file", sha256="1" * 64)
    top = sbom.Part("artifact:d", "d", "application")
    assert sbom.serial_number(top, [a], [], 1) == sbom.serial_number(top, [a], [], 1)
    assert sbom.serial_number(top, [a], [], 1) != sbom.serial_number(top, [b], [], 1)
    assert doc["serialNumber"].startswith("urn:uuid:")


def test_readme_licence_table_names_each_component_and_its_text(built: Path) -> None:
    text = (built / "whisper_base_xeon" / "README.md").read_text()
    section = text.split("## Licences", 1)[1].split("## Troubleshooting", 1)[0]
    assert (
        "| libgomp1 | 12.2.0-14+deb12u1 | GPL-3.0-or-later WITH GCC-exception-3.1 | `libgomp.so.1` | "
        "`licenses/libgomp1.copyright`, `licenses/GPL-3` |" in section
    )
    assert "| whisper.cpp | 1.8.5 | MIT | `libwhisper.so` | `licenses/whisper.cpp.LICENSE` |" in section
    assert "`ggml-base-q5_1.bin`, `ggml-base-q8_0.bin` | `licenses/whisper-weights.LICENSE` |" in section
    assert (
        (built / "whisper_base_xeon" / "licenses" / "whisper-weights.LICENSE")
        .read_bytes()
        .startswith(b"MIT License\n\nCopyright (c) 2022 OpenAI")
    )


def test_a_removed_licence_text_is_named(built: Path) -> None:
    d = built / "whisper_base_xeon"
    (d / sbom.WEIGHTS_TEXT).unlink()
    found = [str(f) for f in check_sbom(d)]
    assert f"{d / sbom.WEIGHTS_TEXT}: file listed in sbom.cdx.json: wanted present, got missing" in found[0]
    assert any(
        f.startswith(f"{d / sbom.WEIGHTS_TEXT}: licence text of ggml-base-q5_1.bin (MIT): wanted present")
        for f in found
    )
    # MIT still has a text (whisper.cpp's), so no finding says MIT has none at all.
    assert not any("licence text of MIT (named by" in f for f in found)


def test_a_licence_with_no_text_at_all_is_named(built: Path) -> None:
    d = built / "whisper_base_xeon"
    (d / sbom.GPL3_TEXT).unlink()
    found = [str(f) for f in check_sbom(d)]
    assert any(
        f.startswith(
            f"{d / sbom.SBOM}: licence text of GPL-3.0-or-later (named by g++-12, gcc-12, libgomp.so.1, "
            "libgomp1): wanted a text shipped in the artifact, got none (licenses/GPL-3 missing)"
        )
        for f in found
    ), found


def test_a_file_differing_from_its_entry_and_an_unlisted_file_are_named(built: Path) -> None:
    d = built / "whisper_base_xeon"
    lib = d / "libggml.so.0"
    want = artifacts.sha256_file(lib)
    with lib.open("ab") as f:
        f.write(b"x")
    (d / "extra.txt").write_text("not built\n")
    found = [str(f) for f in check_sbom(d)]
    assert f"{lib}: sha256: wanted {want} (sbom.cdx.json), got {artifacts.sha256_file(lib)}" in found[1]
    assert found[0].startswith(
        f"{d / sbom.SBOM}: component for extra.txt: wanted a file component per shipped file, got none"
    )


def test_schema_violations_are_reported_by_the_librarys_validator(built: Path) -> None:
    d = built / "whisper_base_xeon"
    doc = _sbom(d)
    doc["components"][0]["type"] = "not-a-component-type"
    (d / sbom.SBOM).write_text(json.dumps(doc))
    (finding,) = [f for f in check_sbom(d) if f.check == "CycloneDX schema validation"]
    assert "not-a-component-type" in finding.got


def test_spdx_ids() -> None:
    assert sbom.spdx_ids("GPL-3.0-or-later WITH GCC-exception-3.1") == (
        ["GPL-3.0-or-later"],
        ["GCC-exception-3.1"],
    )
    assert sbom.spdx_ids("(MIT OR Apache-2.0) AND BSD-3-Clause") == (
        ["MIT", "Apache-2.0", "BSD-3-Clause"],
        [],
    )


def test_missing_debian_package_is_one_clear_sentence(build_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    build_dirs["dpkg"].write_text("zlib1g\t1\tamd64\t\n")
    with pytest.raises(sbom.SbomError) as e:
        artifacts.organize(out=tmp_path / "ra", epoch=1704067200, **build_dirs)
    assert str(e.value).startswith(
        "Debian package g++-12 ([sbom.debian] in release.toml) is not installed in the builder image;"
    )


def test_a_tampered_licence_source_is_refused(build_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    sdist = build_dirs["sbom_inputs"] / "openai_whisper-20250625.tar.gz"
    sdist.write_bytes(sdist.read_bytes() + b"\0")
    with pytest.raises(sbom.SbomError, match="is missing or its sha256 is not the pinned"):
        artifacts.organize(out=tmp_path / "ra", epoch=1704067200, **build_dirs)


def test_info_prints_components_and_licences(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(built / "whisper_base_xeon")]) == 0
    out = capsys.readouterr().out
    assert "CycloneDX 1.6, " in out
    assert "  GPL-3.0-or-later: licenses/GPL-3\n" in out
    assert "  MIT: licenses/whisper-weights.LICENSE, licenses/whisper.cpp.LICENSE\n" in out
    assert "libgomp.so.1" in out and "pkg:pypi/m-base@2" in out


def test_info_on_a_directory_without_sbom_fails_with_exit_4(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "whisper_base_xeon"
    shutil.copytree(built / "whisper_base_xeon", d)
    (d / sbom.SBOM).unlink()
    assert cli.main(["info", str(d)]) == 4
    err = capsys.readouterr().err
    assert err == f"error: {d / sbom.SBOM} is missing: this artifact has no SBOM; pull or build it again.\n"
    assert cli.main(["info", str(tmp_path)]) == 4  # not an artifact at all: artifact.json is asked for first
    assert "has no artifact.json" in capsys.readouterr().err


def test_an_official_model_is_recorded_by_url_and_sha1(
    build_dirs: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    desc = json.loads(build_dirs["build_json"].read_text())
    url = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main/ggml-base.bin"
    desc["inputs"]["models"]["base"] = {"provider": "official", "url": url, "sha1": "4" * 40}
    build_dirs["build_json"].write_text(json.dumps(desc))
    out = tmp_path / "ra"
    artifacts.organize(out=out, epoch=1704067200, **build_dirs)
    d = out / "whisper_base_xeon"
    assert check_sbom(d) == []
    (model,) = [c for c in _sbom(d)["components"] if c["type"] == "machine-learning-model"]
    assert {"alg": "SHA-1", "content": "4" * 40} in model["hashes"]
    assert model["purl"].startswith("pkg:generic/ggml-base.bin?checksum=sha1:" + "4" * 40)
    # The weights' licence text still comes from the openai-whisper sdist; nothing was converted.
    (assets,) = [c for c in _sbom(d)["components"] if c["name"] == "openai-whisper"]
    assert assets["description"] == "the weights' licence text"
