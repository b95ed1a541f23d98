"""The boto3 publisher against a real SeaweedFS server on loopback with authentication on."""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest
from test_publish_support import (
    TEST_SETTINGS,
    local_files,
    make_artifacts,
    running_store,
    stored_files,
    write_sums,
)

from whisper_release.core.errors import PublishError
from whisper_release.publish.push import MANIFEST, push
from whisper_release.s3.client import make_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("store")) as s:
        yield s


@pytest.fixture
def cfg(store, request):
    # One prefix per test: tests share the server, never each other's objects.
    return store.config().with_target(prefix=f"t/{request.node.name}")


def _keys(client, cfg, release_key):
    resp = client.list_objects_v2(Bucket=cfg.bucket, Prefix=release_key + "/")
    return [o["Key"] for o in resp.get("Contents", [])]


def test_full_push_reads_back_identical_and_orders_manifest_last(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    report = push(art, cfg, version="1.0.0-r1", settings=TEST_SETTINGS)
    client = make_client(cfg)
    assert stored_files(client, cfg, report.release_key) == local_files(art)
    for rel, digest in local_files(art).items():
        head = client.head_object(Bucket=cfg.bucket, Key=f"{report.release_key}/{rel}")
        assert head["Metadata"]["sha256"] == digest
    # The large weights went up in parts (multipart ETag "<md5>-<n>").
    big_key = f"{report.release_key}/whisper_tiny.en_xeon/ggml-tiny.en-q5_1.bin"
    big = client.head_object(Bucket=cfg.bucket, Key=big_key)
    assert big["ETag"].strip('"').endswith("-3")
    assert report.uploaded[-1] == report.manifest_key
    assert all(k.endswith("/SHA256SUMS") for k in report.uploaded[-3:-1])
    assert len(report.uploaded) == len(local_files(art)) and report.skipped == []
    assert report.location == f"s3://{cfg.bucket}/{cfg.prefix}/1.0.0-r1/"


def test_second_push_uploads_nothing(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    first = push(art, cfg, version="2.0", settings=TEST_SETTINGS, progress=False)
    second = push(art, cfg, version="2.0", settings=TEST_SETTINGS, progress=False)
    assert len(first.uploaded) == 17
    assert second.uploaded == [] and second.replaced == [] and second.bytes_uploaded == 0
    assert sorted(second.skipped) == sorted(first.uploaded)


def test_wrong_credentials_clear_error_nothing_uploaded(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    bad = dataclasses.replace(cfg, secret_key="not-the-secret-0000")
    with pytest.raises(PublishError, match="rejected the credentials") as e:
        push(art, bad, version="3.0", settings=TEST_SETTINGS)
    assert "not-the-secret" not in str(e.value) and cfg.secret_key not in str(e.value)
    unknown = dataclasses.replace(cfg, access_key="NOSUCHKEY123", secret_key="x" * 20)
    with pytest.raises(PublishError, match="InvalidAccessKeyId"):
        push(art, unknown, version="3.0", settings=TEST_SETTINGS)
    assert _keys(make_client(cfg), cfg, cfg.key("3.0")) == []


def test_missing_bucket_refused_for_configured_store_created_on_request(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art", models=("base",), big=1000)
    configured = dataclasses.replace(cfg, bucket="no-such-bucket-here", create_bucket=False)
    with pytest.raises(PublishError, match="does not exist.*--create-bucket"):
        push(art, configured, version="1", settings=TEST_SETTINGS)
    report = push(art, configured, version="1", settings=TEST_SETTINGS, create_bucket=True)
    assert report.bucket_created and len(report.uploaded) == 9


def test_changed_artifact_refused_without_force_replaced_with_force(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    push(art, cfg, version="4.0", settings=TEST_SETTINGS, progress=False)
    old = local_files(art)
    lib = art / "whisper_base_xeon" / "libwhisper.so"
    lib.write_bytes(b"rebuilt" + lib.read_bytes())
    write_sums(lib.parent)
    client = make_client(cfg)
    with pytest.raises(PublishError, match=r"already exists .* different content .*--force"):
        push(art, cfg, version="4.0", settings=TEST_SETTINGS, progress=False)
    assert stored_files(client, cfg, cfg.key("4.0")) == old
    report = push(art, cfg, version="4.0", settings=TEST_SETTINGS, progress=False, force=True)
    assert stored_files(client, cfg, cfg.key("4.0")) == local_files(art) != old
    assert sorted(report.replaced) == sorted(
        [cfg.key("4.0", "whisper_base_xeon/libwhisper.so"), cfg.key("4.0", "whisper_base_xeon/SHA256SUMS"),
         cfg.key("4.0", MANIFEST)])
    assert report.uploaded == [] and report.replaced[-1] == report.manifest_key


def test_removed_file_counts_as_different_content(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    push(art, cfg, version="5.0", settings=TEST_SETTINGS, progress=False)
    (art / "whisper_base_xeon" / "libgomp.so.1").unlink()
    write_sums(art / "whisper_base_xeon")
    with pytest.raises(PublishError, match="libgomp.so.1"):
        push(art, cfg, version="5.0", settings=TEST_SETTINGS, progress=False)
    report = push(art, cfg, version="5.0", settings=TEST_SETTINGS, progress=False, force=True)
    assert cfg.key("5.0", "whisper_base_xeon/libgomp.so.1") in report.deleted
    assert stored_files(make_client(cfg), cfg, cfg.key("5.0")) == local_files(art)


def test_unreachable_endpoint_is_one_sentence(tmp_path, cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = dataclasses.replace(cfg, endpoint=f"http://127.0.0.1:{port}")
    settings = dataclasses.replace(TEST_SETTINGS, max_attempts=1)
    with pytest.raises(PublishError, match=f"Cannot reach the S3 store at http://127.0.0.1:{port}"):
        push(make_artifacts(tmp_path / "art"), dead, version="6.0", settings=settings)


def test_server_killed_mid_push_retries_fails_then_rerun_completes(tmp_path, caplog):
    art = make_artifacts(tmp_path / "art")
    with running_store(tmp_path / "store") as store:
        cfg = store.config()
        killed = []

        def kill_after_first(key: str) -> None:
            if not killed:
                killed.append(key)
                store.kill()

        caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")
        with pytest.raises(PublishError, match="failed after 3 attempts.*was not published"):
            push(art, cfg, version="7.0", settings=TEST_SETTINGS, progress=False, on_object=kill_after_first)
        assert "Retry needed" in caplog.text
        cfg = store.start()
        client = make_client(cfg)
        keys = _keys(client, cfg, cfg.key("7.0"))
        assert killed and killed[0] in keys and cfg.key("7.0", MANIFEST) not in keys
        report = push(art, cfg, version="7.0", settings=TEST_SETTINGS, progress=False)
        assert killed[0] in report.skipped and report.uploaded[-1] == report.manifest_key
        assert stored_files(client, cfg, cfg.key("7.0")) == local_files(art)


def test_dry_run_contacts_nothing_and_lists_plan_in_order(tmp_path, cfg):
    dead = dataclasses.replace(cfg, endpoint="http://127.0.0.1:9")
    report = push(make_artifacts(tmp_path / "art"), dead, version="8.0", dry_run=True)
    keys = [p.key for p in report.plan]
    assert keys[-1].endswith(MANIFEST) and all(k.endswith("SHA256SUMS") for k in keys[-3:-1])
    assert report.uploaded == [] and len(keys) == 17
