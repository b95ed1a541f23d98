"""latest.json: the publisher's version order and pointer bytes, and the reader in consume/pull.py.

The store side (written after the manifest, moved only forward, read by pull) runs against the real
SeaweedFS in tests/integration/test_pull_faults.py.
"""

from __future__ import annotations

import hashlib

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
