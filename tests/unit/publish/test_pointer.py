"""latest.json: the publisher's version order and pointer bytes, and the reader in consume/pull.py.

The store side (written after the manifest, moved only forward, read by pull) runs against the real
SeaweedFS in tests/integration/test_pull_faults.py, and for the shell publisher in
tests/integration/test_push_to_minio.py. Here both publishers' rules meet one table of cases.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from whisper_release.consume import pull
from whisper_release.publish import pointer


@pytest.mark.parametrize(
    "older,newer",
    [
        ("1.8.5-r2", "1.8.5-r10"),
        ("1.8.5-r9", "1.8.5-r10"),
        ("1.8.5", "1.8.5-r1"),
        ("1.8.5-r10", "1.9.0"),
        ("1.9.0", "1.10.0"),
        ("2026.1", "2026.12"),
    ],
)
def test_version_order_compares_numbers_as_numbers(older, newer):
    assert pointer.version_key(older) < pointer.version_key(newer)
    assert sorted([newer, older], key=pointer.version_key) == [older, newer]


def test_the_pointer_the_publisher_writes_is_what_pull_reads():
    digest = hashlib.sha256(b"manifest").hexdigest()
    raw = pointer.pointer_bytes("1.8.5-r2", digest)
    assert pointer.LATEST_KEY == pull.LATEST_KEY
    assert pull.parse_latest(raw, "s3://b/p/latest.json") == pull.Latest("1.8.5-r2", digest)


# ---- one rule, two publishers: pointer.py and minio/push_to_minio.sh -----------------------------

SCRIPT = Path(__file__).resolve().parents[3] / "minio" / "push_to_minio.sh"
TABLE = Path(__file__).with_name("version_order.tsv")
MIRROR = {"<": ">", "=": "=", ">": "<"}


def _table() -> list[tuple[str, str, str]]:
    rows = [line.split("\t") for line in TABLE.read_text().splitlines() if line and not line.startswith("#")]
    assert rows and all(len(r) == 3 and r[1] in MIRROR for r in rows), "malformed version_order.tsv"
    return [(a, op, b) for a, op, b in rows]


def _python_op(a: str, b: str) -> str:
    ka, kb = pointer.version_key(a), pointer.version_key(b)
    return "<" if ka < kb else ">" if ka > kb else "="


def _in_script(body: str, *args: str) -> str:
    """Run `body` in bash with push_to_minio.sh sourced (which defines its functions and stops)."""
    p = subprocess.run(["bash", "-c", f'source "$0"; {body}', str(SCRIPT), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_both_publishers_order_the_table_of_versions_alike():
    rows = _table()
    pairs = [(a, b) for a, _, b in rows] + [(b, a) for a, _, b in rows]
    want = [op for _, op, _ in rows] + [MIRROR[op] for _, op, _ in rows]
    assert [_python_op(a, b) for a, b in pairs] == want
    flat = [v for pair in pairs for v in pair]
    out = _in_script('while (($#)); do version_cmp "$1" "$2"; shift 2; done', *flat)
    assert out.split() == want


def _pointer_cases() -> dict[str, bytes]:
    digest = hashlib.sha256(b"manifest").hexdigest()
    good = pointer.pointer_bytes("1.8.5-r2", digest)
    # A version long enough that the pointer is exactly the size bound, then one byte over it.
    fill = pointer.MAX_POINTER_BYTES - len(pointer.pointer_bytes("", digest))
    swapped = json.dumps({"manifest_sha256": digest, "version": "1.8.5-r2"}, indent=2) + "\n"
    return {
        "as written": good,
        "other version": pointer.pointer_bytes("2026.12+b_1", digest),
        "at the size bound": pointer.pointer_bytes("v" * fill, digest),
        "over the size bound": pointer.pointer_bytes("v" * (fill + 1), digest),
        "compact JSON": json.dumps({"version": "1.8.5-r2", "manifest_sha256": digest}).encode(),
        "keys swapped": swapped.encode(),
        "no final newline": good[:-1],
        "CRLF": good.replace(b"\n", b"\r\n"),
        "trailing bytes": good + b"x",
        "NUL after it": good + b"\0",
        "NUL inside": good.replace(b"1.8.5", b"1.8\x005"),
        "uppercase digest": pointer.pointer_bytes("1.8.5-r2", digest.upper()),
        "short digest": pointer.pointer_bytes("1.8.5-r2", digest[:63]),
        "version with a slash": pointer.pointer_bytes("a/b", digest),
        "version starting with a dot": pointer.pointer_bytes("..", digest),
        "non-ASCII version": pointer.pointer_bytes("1.8.5-é", digest),
        "escaped version": good.replace(b'"1.8', b'"\\u0031.8'),
        "empty": b"",
        "html": b"<html>",
    }


def test_both_publishers_accept_exactly_the_pointers_they_write(tmp_path):
    cases = _pointer_cases()
    files = []
    for i, raw in enumerate(cases.values()):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_bytes(raw)
    script = _in_script('for f; do pointer_version "$f" || echo "-"; done', *map(str, files)).splitlines()
    python = [pointer.parse_pointer(raw) or "-" for raw in cases.values()]
    assert dict(zip(cases, script, strict=True)) == dict(zip(cases, python, strict=True))
    assert len(cases["at the size bound"]) == pointer.MAX_POINTER_BYTES
    valid = {name for name, v in zip(cases, python, strict=True) if v != "-"}
    assert valid == {"as written", "other version", "at the size bound"}


def test_the_script_writes_the_bytes_pointer_py_writes():
    digest = hashlib.sha256(b"m").hexdigest()
    versions = ["1.8.5-r2", "2026.12+b_1", "A0"]
    for v in versions:
        got = subprocess.run(["bash", "-c", 'source "$0"; pointer_json "$1" "$2"', str(SCRIPT), v, digest],
                             capture_output=True, timeout=60, check=True).stdout
        assert got == pointer.pointer_bytes(v, digest)
