"""The publisher's local side: artifact checks, upload order, version rules, dry run (no network)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from whisper_release.core.errors import PublishError, VerificationError
from whisper_release.publish.push import check_version, push, scan_artifacts
from whisper_release.s3.config import S3Config, validate


def _sums(d: Path) -> None:
    (d / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(d.iterdir()) if p.name != "SHA256SUMS"))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "release_artifacts"
    for model in ("tiny.en", "base"):
        d = root / f"whisper_{model}_xeon"
        d.mkdir(parents=True)
        for name in ("libwhisper.so", "libggml.so.0", f"ggml-{model}-q5_1.bin", "README.md"):
            (d / name).write_bytes(os.urandom(64))
        _sums(d)
    _manifest(root)
    return root


def _manifest(root: Path, **fields: object) -> None:
    """The build's in-toto manifest: every other file of the tree as a subject with its sha256."""
    subject = [{"name": p.relative_to(root).as_posix(),
                "digest": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}}
               for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    (root / "manifest.json").write_text(json.dumps({"version": "x", **fields, "subject": subject}))


CFG = validate(S3Config("http://127.0.0.1:9", "whisper-releases", "whisper.cpp",
                        access_key="k", secret_key="s" * 20))


def test_scan_orders_data_then_sums_then_manifest(tree):
    objs = scan_artifacts(tree)
    names = [o.relpath for o in objs]
    assert names[-1] == "manifest.json"
    assert names[-3:-1] == ["whisper_base_xeon/SHA256SUMS", "whisper_tiny.en_xeon/SHA256SUMS"]
    assert all("SHA256SUMS" not in n for n in names[:-3]) and len(names) == 11
    o = next(o for o in objs if o.relpath == "whisper_base_xeon/libwhisper.so")
    assert o.sha256 == hashlib.sha256(o.path.read_bytes()).hexdigest() and o.size == 64


def test_scan_reports_every_finding_at_once(tree):
    base = tree / "whisper_base_xeon"
    (base / "libwhisper.so").write_bytes(b"tampered")
    (base / "extra.txt").write_text("not listed")
    (tree / "whisper_tiny.en_xeon" / "libggml.so.0").unlink()
    with pytest.raises(VerificationError) as e:
        scan_artifacts(tree)
    msg = str(e.value)
    assert "3 finding(s)" in msg
    assert "whisper_base_xeon/libwhisper.so has sha256" in msg
    assert "whisper_base_xeon/extra.txt is not listed" in msg
    assert "lists libggml.so.0, which is missing" in msg


def test_scan_refuses_symlinks_missing_sums_and_manifest(tree, tmp_path):
    (tree / "whisper_base_xeon" / "link.so").symlink_to("libwhisper.so")
    with pytest.raises(VerificationError, match="link.so is a symlink"):
        scan_artifacts(tree)
    (tree / "whisper_base_xeon" / "link.so").unlink()
    (tree / "whisper_tiny.en_xeon" / "SHA256SUMS").unlink()
    with pytest.raises(VerificationError, match="whisper_tiny.en_xeon/ has no SHA256SUMS"):
        scan_artifacts(tree)
    (tree / "manifest.json").write_text("{not json")
    with pytest.raises(VerificationError, match="manifest.json is not valid JSON"):
        scan_artifacts(tree)
    with pytest.raises(VerificationError, match="has no manifest.json"):
        scan_artifacts(tmp_path / "nowhere")


def test_manifest_and_sha256sums_must_agree_before_anything_is_sent(tree):
    # Each file below matches its SHA256SUMS line; only the manifest says otherwise (issue 13, item 3).
    good = json.loads((tree / "manifest.json").read_text())
    doc = json.loads((tree / "manifest.json").read_text())
    by_name = {s["name"]: s for s in doc["subject"]}
    by_name["whisper_base_xeon/libwhisper.so"]["digest"]["sha256"] = "0" * 64
    doc["subject"].remove(by_name["whisper_tiny.en_xeon/README.md"])
    doc["subject"].append({"name": "whisper_base_xeon/libgone.so", "digest": {"sha256": "1" * 64}})
    (tree / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(VerificationError) as e:
        push(tree, CFG, version="1")  # port 9: reaching the network would be a different error
    msg = str(e.value)
    assert "3 finding(s)" in msg and "nothing was published" in msg
    sha = hashlib.sha256((tree / "whisper_base_xeon" / "libwhisper.so").read_bytes()).hexdigest()
    assert (f"manifest.json gives whisper_base_xeon/libwhisper.so sha256 000000000000…, "
            f"whisper_base_xeon/SHA256SUMS and the file {sha[:12]}…") in msg
    assert ("whisper_tiny.en_xeon/README.md is in whisper_tiny.en_xeon/SHA256SUMS but not among "
            "manifest.json's subjects") in msg
    assert "manifest.json lists whisper_base_xeon/libgone.so, which is not in the tree" in msg
    (tree / "manifest.json").write_text(json.dumps(good))
    assert len(scan_artifacts(tree)) == 11


@pytest.mark.parametrize("manifest", [{"version": "x"}, {"subject": []}, {"subject": [{"name": "x"}]}, ["x"]])
def test_manifest_without_subjects_is_refused(tree, manifest):
    (tree / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match="has no 'subject' list .*nothing was published"):
        scan_artifacts(tree)


def test_bad_sums_line(tree):
    (tree / "whisper_base_xeon" / "SHA256SUMS").write_text("nonsense\n")
    with pytest.raises(VerificationError, match=r"SHA256SUMS line 1 is not '<sha256>  <name>'"):
        scan_artifacts(tree)


@pytest.mark.parametrize("version", ["", "a/b", "..", "-x", "1.0 beta"])
def test_version_must_be_one_segment(version):
    with pytest.raises(PublishError, match="path segment"):
        check_version(version)


def test_dry_run_plans_without_contacting_the_store(tree, capsys):
    # Port 9 (discard) on loopback: any contact would fail; a dry run must not try.
    report = push(tree, CFG, version="1.8.5-r1", dry_run=True)
    keys = [p.key for p in report.plan]
    assert keys[0].startswith("whisper.cpp/1.8.5-r1/whisper_base_xeon/")
    assert keys[-1] == "whisper.cpp/1.8.5-r1/manifest.json" == report.manifest_key
    assert report.location == "s3://whisper-releases/whisper.cpp/1.8.5-r1/"
    assert report.uploaded == [] and report.dry_run
    assert "the store was not contacted" in capsys.readouterr().err


def test_invalid_artifacts_fail_before_any_network(tree):
    (tree / "whisper_base_xeon" / "README.md").write_text("changed")
    with pytest.raises(VerificationError, match="nothing was published"):
        push(tree, CFG, version="1")


def test_publish_config_prefers_configured_store_and_never_starts_one_on_dry_run(tmp_path, monkeypatch):
    from whisper_release.publish.target import publish_config

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER",
                "MINIO_ROOT_PASSWORD", "WHISPER_RELEASE_S3_CONFIG", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    planned = publish_config(store_root=tmp_path / "store", dry_run=True)
    assert planned.create_bucket and "dry run" in planned.source
    assert not (tmp_path / "store" / "credentials.json").exists()  # nothing written, nothing started
    assert (planned.bucket, planned.prefix) == ("whisper-releases", "whisper.cpp")  # release.toml
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.1.2.3:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s" * 20)
    cfg = publish_config(store_root=tmp_path / "store", bucket="other-bucket")
    assert (cfg.endpoint, cfg.bucket, cfg.create_bucket) == ("http://10.1.2.3:9000", "other-bucket", False)


def test_store_command_refuses_start_and_stop_together(tmp_path):
    from whisper_release.core.errors import ConfigError
    from whisper_release.s3.store import store_command

    with pytest.raises(ConfigError, match="both --start and --stop"):
        store_command(start=True, stop=True, root=tmp_path)


def test_scan_checks_files_below_an_artifact_directory_against_its_sums(tree):
    base = tree / "whisper_base_xeon"
    (base / "licenses").mkdir()
    text = base / "licenses" / "GPL-3"
    text.write_text("GNU GENERAL PUBLIC LICENSE\n")
    sums = base / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{hashlib.sha256(text.read_bytes()).hexdigest()}  licenses/GPL-3\n")
    _manifest(tree)  # the build lists it as a subject too
    assert "whisper_base_xeon/licenses/GPL-3" in [o.relpath for o in scan_artifacts(tree)]
    (base / "licenses" / "extra").write_text("not listed")
    with pytest.raises(VerificationError, match="whisper_base_xeon/licenses/extra is not listed"):
        scan_artifacts(tree)
