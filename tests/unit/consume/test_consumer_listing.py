"""open_artifact refuses an artifact whose SHA256SUMS leaves out the model or a library it would load
(issue 13 item 8): real files, real hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_consumer import _meta

from whisper_release.consume import consumer
from whisper_release.core.errors import VerificationError


def _artifact(tmp_path: Path, listed: list[str], extra: dict[str, bytes]) -> Path:
    d = tmp_path / "whisper_base_xeon"
    d.mkdir()
    files = {
        "libwhisper.so": b"\x7fELF whisper",
        "libggml.so.0": b"\x7fELF ggml",
        "libggml-cpu.so.0": b"\x7fELF cpu",
        "ggml-base-q5_1.bin": b"model",
        "README.md": b"# readme\n",
        "artifact.json": json.dumps(_meta()).encode(),
    }
    for name, data in {**files, **extra}.items():
        (d / name).write_bytes(data)
    (d / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in sorted(listed))
    )
    return d


ALL = [
    "libwhisper.so", "libggml.so.0", "libggml-cpu.so.0", "ggml-base-q5_1.bin", "README.md", "artifact.json",
]


def test_complete_listing_is_accepted(tmp_path: Path) -> None:
    assert consumer.open_artifact(_artifact(tmp_path, ALL, {})).model == "base-q5_1"


@pytest.mark.parametrize(
    "unlisted,extra",
    [
        ("ggml-base-q5_1.bin", {}),
        ("libwhisper.so", {}),
        ("libggml-cpu.so.0", {}),
        ("libggml-cpu-evil.so", {"libggml-cpu-evil.so": b"\x7fELF added"}),
    ],
)
def test_a_loaded_file_missing_from_sha256sums_is_refused(tmp_path: Path, unlisted: str, extra: dict) -> None:
    d = _artifact(tmp_path, [n for n in ALL if n != unlisted], extra)
    with pytest.raises(VerificationError) as e:
        consumer.open_artifact(d)
    assert str(e.value) == (
        f"{d}: {unlisted} would be loaded but is not listed in SHA256SUMS, so it cannot be verified; "
        "remove what you added, or pull the artifact again."
    )


def test_unlisted_file_that_is_never_loaded_is_not_required(tmp_path: Path) -> None:
    d = _artifact(tmp_path, ALL, {"notes.txt": b"operator's notes"})
    assert consumer.open_artifact(d).model_file.name == "ggml-base-q5_1.bin"
