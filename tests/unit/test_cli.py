"""The console script's conventions: one version source, a summary per sub-command, info and --json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from test_consumer import _artifact

from whisper_release import cli
from whisper_release.consume import info
from whisper_release.core.errors import VerificationError
from whisper_release.layout.artifacts import METADATA
from whisper_release.layout.sbom import SBOM


def test_version_is_the_package_metadata(capsys) -> None:
    try:
        cli.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"whisper-release {metadata.version('whisper-release')}"
    import whisper_release

    assert not hasattr(whisper_release, "__version__")  # no second literal to drift


def test_every_sub_command_has_a_summary() -> None:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {c.dest: c.help for c in sub._choices_actions}
    assert set(summaries) == {"convert", "pull", "transcribe", "info", "audit"}
    assert all(summaries.values()), summaries


def test_the_library_never_imports_the_entry_point() -> None:
    code = (
        "import sys, whisper_release.consume.consumer, whisper_release.consume.info;"
        "print('whisper_release.cli' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_info_prints_artifact_json_as_text_and_json(tmp_path: Path, capsys) -> None:
    d = _artifact(tmp_path)
    # The text's artifact.json part; its SBOM part is tests/unit/layout/test_sbom.py's (on a real layout).
    out = info.format_info(json.loads((d / METADATA).read_text()))
    assert "ggml-base-q5_1.bin" in out and "(primary)" in out and "avx, avx2, fma, sse4_2" in out
    assert cli.main(["info", str(d)]) == VerificationError.exit_code  # this fake artifact has no SBOM
    assert f"{d / SBOM} is missing" in capsys.readouterr().err
    assert cli.main(["info", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "base"
    (d / "artifact.json").write_text("{}")
    assert cli.main(["info", str(d)]) == VerificationError.exit_code
    assert "artifact.json: field 'schema'" in capsys.readouterr().err
