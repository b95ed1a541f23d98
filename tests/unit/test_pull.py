"""Pure parts of pull: SHA256SUMS and manifest parsing, release resolution, atomic placement.

The S3 side (listing, download, tampering) runs against a real server in
tests/integration/test_consumer_pull.py.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from whisper_release.consume import pull
from whisper_release.core.errors import ConfigError, VerificationError

H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()
REMOTE = pull.Remote(client=None, bucket="whisper-releases", prefix="whisper.cpp")


def test_parse_sums_reads_sha256sum_output_including_binary_marker():
    text = f"{H1}  libwhisper.so\n{H2} *ggml-base-q5_1.bin\n\n"
    assert pull.parse_sums(text, "X") == {"libwhisper.so": H1, "ggml-base-q5_1.bin": H2}


def test_parse_sums_reads_a_licence_text_in_a_subdirectory():
    assert pull.parse_sums(f"{H1}  licenses/GPL-3\n", "X") == {"licenses/GPL-3": H1}


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "lists no files"),
        (f"{H1[:-1]}  a\n", "line 1"),
        ("zz" * 32 + "  a\n", "line 1"),
        (f"{H1}  ../evil\n", "unsafe"),
        (f"{H1}  sub/../../evil\n", "unsafe"),
        (f"{H1}  /etc/passwd\n", "unsafe"),
        (f"{H1}  sub//dir\n", "unsafe"),
        (f"{H1}  a\n{H2}  a\n", "repeated"),
    ],
)
def test_parse_sums_refuses_malformed_or_unsafe_lines(text, needle):
    with pytest.raises(VerificationError, match=needle):
        pull.parse_sums(text, "s3://b/p/SHA256SUMS")


def test_manifest_digests_accepts_in_toto_and_flat_subjects():
    m = {
        "subject": [
            {"name": "whisper_base_xeon/libwhisper.so", "digest": {"sha256": H1.upper()}},
            {"path": "./whisper_tiny.en_xeon/README.md", "sha256": H2},
        ]
    }
    files = pull.manifest_digests(m)
    assert files == {"whisper_base_xeon/libwhisper.so": H1, "whisper_tiny.en_xeon/README.md": H2}
    assert pull.models_in(files) == ["base", "tiny.en"]


@pytest.mark.parametrize("m", [{}, {"subjects": []}, {"subjects": [{"name": "x"}]}, {"subjects": ["x"]}])
def test_manifest_without_usable_subjects_is_refused(m):
    with pytest.raises(VerificationError, match="manifest"):
        pull.manifest_digests(m)


def test_dirname_round_trip():
    assert pull.artifact_dirname("tiny.en") == "whisper_tiny.en_xeon"
    assert pull.model_of_dirname("whisper_tiny.en_xeon") == "tiny.en"
    assert pull.model_of_dirname("whisper__xeon") is None
    assert pull.model_of_dirname("README.md") is None


def _listing():
    t = lambda h: datetime(2026, 1, 1, h, tzinfo=UTC)  # noqa: E731
    return pull.Listing(
        complete=sorted(
            [pull.Release("1.8.5-r2", t(3)), pull.Release("1.8.5-r10", t(1))], key=lambda r: r.published
        ),
        incomplete=["1.8.5-r11"],
    )


def test_latest_is_the_most_recently_completed_release_not_the_highest_name():
    assert pull.resolve_release(_listing(), "latest", REMOTE) == "1.8.5-r2"
    assert pull.resolve_release(_listing(), "1.8.5-r10", REMOTE) == "1.8.5-r10"


def test_unknown_release_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available releases are 1\.8\.5-r10, 1\.8\.5-r2"):
        pull.resolve_release(_listing(), "9.9.9", REMOTE)


def test_release_still_being_published_is_refused():
    with pytest.raises(VerificationError, match="still being published"):
        pull.resolve_release(_listing(), "1.8.5-r11", REMOTE)


def test_latest_with_nothing_published():
    with pytest.raises(ConfigError, match="No complete release"):
        pull.resolve_release(pull.Listing(), "latest", REMOTE)


def test_place_swaps_an_existing_directory_and_leaves_no_leftovers(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("new")
    pull._place(new, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert [p.name for p in dest.iterdir()] == ["f"]


def test_check_dir_detects_any_difference(tmp_path):
    (tmp_path / "a").write_bytes(b"one")
    assert pull._check_dir(tmp_path, {"a": H1})
    assert not pull._check_dir(tmp_path, {"a": H2})
    assert not pull._check_dir(tmp_path, {"a": H1, "b": H2})
    (tmp_path / "extra").write_bytes(b"")
    assert not pull._check_dir(tmp_path, {"a": H1})
