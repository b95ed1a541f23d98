"""Pure parts of pull: SHA256SUMS and manifest parsing, release resolution, atomic placement.

The S3 side (listing, download, tampering) runs against a real server in
tests/integration/test_consumer_pull.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from whisper_release.consume import place, pull
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.layout import artifacts as layout

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
    assert layout.model_dir_name("tiny.en") == "whisper_tiny.en_xeon"
    assert layout.model_of_dir_name("whisper_tiny.en_xeon") == "tiny.en"
    assert layout.model_of_dir_name("whisper__xeon") is None
    assert layout.model_of_dir_name("README.md") is None


def _listing():
    t = lambda h: datetime(2026, 1, 1, h, tzinfo=UTC)  # noqa: E731
    return pull.Listing(
        complete=sorted(
            [pull.Release("1.8.5-r2", t(3)), pull.Release("1.8.5-r10", t(1))], key=lambda r: r.published
        ),
        incomplete=["1.8.5-r11"],
    )


def test_latest_is_what_the_pointer_names_not_the_newest_upload():
    # 1.8.5-r2's manifest landed last (a push --force of an old version): the pointer still decides.
    latest = pull.Latest("1.8.5-r10", H1)
    assert pull.resolve_release(_listing(), "latest", REMOTE, latest) == "1.8.5-r10"
    assert pull.resolve_release(_listing(), "1.8.5-r2", REMOTE, latest) == "1.8.5-r2"


def test_latest_without_a_pointer_says_so_and_lists_the_releases():
    with pytest.raises(ConfigError, match=r"latest\.json does not exist.*1\.8\.5-r10, 1\.8\.5-r2"):
        pull.resolve_release(_listing(), "latest", REMOTE, None)


def test_latest_pointing_at_an_incomplete_release_is_refused():
    with pytest.raises(VerificationError, match="names release '1.8.5-r11', which has no manifest.json"):
        pull.resolve_release(_listing(), "latest", REMOTE, pull.Latest("1.8.5-r11", H1))


def test_parse_latest_reads_the_pointer():
    raw = json.dumps({"version": "1.8.5-r2", "manifest_sha256": H1}).encode()
    assert pull.parse_latest(raw, "X") == pull.Latest("1.8.5-r2", H1)


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        json.dumps({"version": "1.8.5-r2"}).encode(),
        json.dumps({"version": "1.8.5-r2", "manifest_sha256": H1[:-1]}).encode(),
        json.dumps({"version": "../other", "manifest_sha256": H1}).encode(),
        json.dumps({"version": "a/b", "manifest_sha256": H1}).encode(),
        json.dumps({"version": 5, "manifest_sha256": H1}).encode(),
    ],
)
def test_parse_latest_refuses_anything_but_a_safe_version_and_a_digest(doc):
    with pytest.raises(VerificationError, match="s3://b/p/latest.json is not a latest-release pointer"):
        pull.parse_latest(doc, "s3://b/p/latest.json")


def test_manifest_listing_a_file_twice_with_two_digests_is_refused():
    a = "whisper_base_xeon/a"
    m = {"subject": [{"name": a, "sha256": H1}, {"name": a, "sha256": H2}]}
    with pytest.raises(VerificationError, match="lists whisper_base_xeon/a twice"):
        pull.manifest_digests(m)


@pytest.mark.parametrize("name", ["../whisper_base_xeon/a", "/etc/passwd", "whisper_base_xeon//a", "x/./a"])
def test_manifest_with_an_unsafe_path_is_refused(name):
    with pytest.raises(VerificationError, match="unsafe path"):
        pull.manifest_digests({"subject": [{"name": name, "sha256": H1}]})


def test_unknown_release_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available releases are 1\.8\.5-r10, 1\.8\.5-r2"):
        pull.resolve_release(_listing(), "9.9.9", REMOTE)


def test_release_still_being_published_is_refused():
    with pytest.raises(VerificationError, match="still being published"):
        pull.resolve_release(_listing(), "1.8.5-r11", REMOTE)


def test_latest_with_nothing_published():
    with pytest.raises(ConfigError, match="No complete release"):
        pull.resolve_release(pull.Listing(), "latest", REMOTE)


def _new(tmp_path):
    new = place.staging_dir(tmp_path / "dest")
    (new / "f").write_text("new")
    return new


@pytest.fixture(params=["renameat2", "mkdir-claim"])
def rename_path(request, monkeypatch):
    """Both ways of placing: renameat2 (this kernel has it) and the mkdir claim used where it is missing
    (simulated by hiding the C function, since every machine here has it)."""
    if request.param == "mkdir-claim":
        monkeypatch.setattr(place, "_renameat2", lambda: None)
    return request.param


def test_replace_swaps_an_existing_directory_and_leaves_no_leftovers(tmp_path, rename_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old")
    place.replace(_new(tmp_path), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert [p.name for p in dest.iterdir()] == ["f"]


def test_replace_onto_a_plain_file_leaves_no_old_copy(tmp_path, rename_path):
    dest = tmp_path / "dest"
    dest.write_text("a file the user pointed --dest at")
    place.replace(_new(tmp_path), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert dest.is_dir() and [p.name for p in dest.iterdir()] == ["f"]


def test_replace_onto_a_symlink_replaces_the_link_not_its_target(tmp_path, rename_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("not ours")
    dest = tmp_path / "dest"
    dest.symlink_to(target)
    place.replace(_new(tmp_path), dest)
    assert not dest.is_symlink() and [p.name for p in dest.iterdir()] == ["f"]
    assert (target / "keep").read_text() == "not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "target"]


@pytest.mark.parametrize("kind", ["empty dir", "dir", "file", "dangling symlink"])
def test_place_new_never_replaces_anything(tmp_path, rename_path, kind):
    dest = tmp_path / "dest"
    if kind == "empty dir":
        dest.mkdir()  # plain rename(2) would silently replace this one
    elif kind == "dir":
        dest.mkdir()
        (dest / "mine").write_text("x")
    elif kind == "file":
        dest.write_text("x")
    else:
        dest.symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    new = _new(tmp_path)
    with pytest.raises(FileExistsError):
        place.place_new(new, dest)
    assert sorted(p.name for p in tmp_path.iterdir() if p != new) == before
    assert (new / "f").read_text() == "new"
    if kind == "empty dir":
        assert dest.is_dir() and list(dest.iterdir()) == []


def test_staging_dir_gets_its_mode_from_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        d = place.staging_dir(tmp_path / "dest")
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    assert d.name.startswith(".dest.partial-")


def test_check_dir_detects_any_difference(tmp_path):
    (tmp_path / "a").write_bytes(b"one")
    assert pull._check_dir(tmp_path, {"a": H1})
    assert not pull._check_dir(tmp_path, {"a": H2})
    assert not pull._check_dir(tmp_path, {"a": H1, "b": H2})
    (tmp_path / "extra").write_bytes(b"")
    assert not pull._check_dir(tmp_path, {"a": H1})


def test_mkdir_claim_filled_by_someone_else_is_refused_as_existing(tmp_path, monkeypatch):
    # The fallback's window: DEST claimed empty, then filled by another program before the rename.
    monkeypatch.setattr(place, "_renameat2", lambda: None)
    dest = tmp_path / "dest"
    real_rename = os.rename

    def fill_then_rename(src, dst):
        (Path(dst) / "theirs").write_text("x")
        return real_rename(src, dst)

    monkeypatch.setattr(place.os, "rename", fill_then_rename)
    new = _new(tmp_path)
    with pytest.raises(FileExistsError):
        place.place_new(new, dest)
    assert (dest / "theirs").read_text() == "x" and (new / "f").exists()
