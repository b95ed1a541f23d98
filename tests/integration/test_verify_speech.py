"""The real-speech WER gate catches a wrong reference text and names the clip.

The real suite (verify/) runs on a copy of the smallest built artifact with a release.toml whose
[[speech.clips]] librivox-0870 carries another clip's words: the real-speech WER of f16 and of the
q5_1 file must then exceed the ceiling, and the finding must name librivox-0870 first.

Needs built artifacts: $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts (CI builds first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_release.core.pins import default_pins_path, load_pins, project_root
from whisper_release.testing import unavailable

pytestmark = pytest.mark.integration

ROOT = project_root()
SWAPPED = "librivox-0870"
DONOR = "librivox-0930"


@pytest.fixture(scope="module")
def smallest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release_artifacts copy holding only the smallest whisper_<model>_xeon directory."""
    env = os.environ.get("WHISPER_RELEASE_ARTIFACTS")
    root = Path(env) if env else ROOT / "dist" / "release_artifacts"
    dirs = sorted(root.glob("whisper_*_xeon"), key=lambda d: sum(p.stat().st_size for p in d.iterdir()))
    if not dirs:
        unavailable(f"no built artifacts under {root}; run `invoke build` (or set WHISPER_RELEASE_ARTIFACTS)")
    out = tmp_path_factory.mktemp("speech") / "release_artifacts"
    out.mkdir()
    shutil.copyfile(root / "manifest.json", out / "manifest.json")
    shutil.copytree(dirs[0], out / dirs[0].name)
    return out


def _swapped_pins(dest: Path) -> str:
    """release.toml with librivox-0870's reference replaced by librivox-0930's words; returns them."""
    refs = {c.name: c.reference for c in load_pins().speech.clips}  # type: ignore[union-attr]
    text = default_pins_path().read_text(encoding="utf-8")
    block = re.compile(rf'(name = "{SWAPPED}"\n(?:[^\[]*?\n)?reference = )"[^"]*"')
    text, n = block.subn(lambda m: f'{m.group(1)}"{refs[DONOR]}"', text)
    assert n == 1, "release.toml's [[speech.clips]] layout changed: update this test"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "release.toml").write_text(text, encoding="utf-8")
    return refs[DONOR]


def test_a_swapped_reference_fails_the_real_set_and_names_the_clip(smallest: Path, tmp_path: Path) -> None:
    donor_words = _swapped_pins(tmp_path / "root")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "WHISPER_RELEASE_STRICT")}
    env["WHISPER_RELEASE_ROOT"] = str(tmp_path / "root")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "verify"), "-p", "no:cacheprovider", "-q", "-rN",
         "--artifacts", str(smallest), "--report", str(report), "-k", "word_error_rate and q5_1"],
        cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"verify passed with a swapped reference:\n{out}"
    data = json.loads(report.read_text(encoding="utf-8"))
    (model,) = data["models"]
    w = data["models"][model]["wer"]
    # The suite really scored the swapped text (the pins came from the temp root).
    assert {c["name"]: c["reference"] for c in w["clips"]["real"]}[SWAPPED] == donor_words
    findings = [ln for ln in out.splitlines() if ": WER on the real set (" in ln]
    files = sorted(Path(ln.split(": WER on", 1)[0].removeprefix("  - ").strip()).name for ln in findings)
    assert files == sorted([f"ggml-{model}.bin", f"ggml-{model}-q5_1.bin"]), out  # f16 and the shipped file
    for finding in findings:
        assert re.search(rf"worst utterances: {SWAPPED} \(\d+ edits / 8 words\)", finding), finding
    # Nothing else fails: synthetic and jfk are untouched, and the paired gate compares the same
    # (wrong) reference on both sides, so it is not where a reference error shows.
    assert "WER on the synthetic set" not in out and "WER on the jfk set" not in out
    assert "minus f16" not in out
