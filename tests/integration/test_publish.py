"""The boto3 publisher against a real SeaweedFS server on loopback with authentication on."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket

import pytest
from test_publish_support import (
    TEST_SETTINGS,
    local_files,
    make_artifacts,
    running_store,
    stored_files,
    write_manifest,
    write_sums,
)

from whisper_release.core.errors import PublishError
from whisper_release.publish.push import MANIFEST, _local_etag, push
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
    write_manifest(art)
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
    write_manifest(art)
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


def _put_behind_the_publishers_back(client, cfg, key: str, data: bytes, settings=None) -> None:
    """Store `data` under `key` with the sha256 metadata it had; with other bytes, what a buggy
    tool, a bad disk restore or an attacker with write access leaves behind (issue 13, item 5)."""
    import io

    from boto3.s3.transfer import TransferConfig

    old = client.head_object(Bucket=cfg.bucket, Key=key)
    assert old["ContentLength"] == len(data)
    scratch = key + ".scratch"
    tc = TransferConfig(multipart_threshold=settings.multipart_threshold,
                        multipart_chunksize=settings.multipart_chunksize) if settings else None
    client.upload_fileobj(io.BytesIO(data), cfg.bucket, scratch, Config=tc,
                          ExtraArgs={"Metadata": old["Metadata"]})
    if settings is None:
        # The copy keeps the scratch object's metadata (MetadataDirective COPY): the old sha256.
        client.copy_object(Bucket=cfg.bucket, Key=key, CopySource={"Bucket": cfg.bucket, "Key": scratch},
                           MetadataDirective="COPY")
    else:
        # Multipart with the publisher's own part size, so the ETag has the same part count.
        client.upload_fileobj(io.BytesIO(data), cfg.bucket, key, Config=tc,
                              ExtraArgs={"Metadata": old["Metadata"]})
    client.delete_object(Bucket=cfg.bucket, Key=scratch)
    now = client.head_object(Bucket=cfg.bucket, Key=key)
    assert (now["ContentLength"], now["Metadata"]) == (old["ContentLength"], old["Metadata"])


def test_repush_replaces_objects_whose_bytes_changed_under_the_same_metadata(tmp_path, cfg):
    art = make_artifacts(tmp_path / "art")
    push(art, cfg, version="9.0", settings=TEST_SETTINGS, progress=False)
    client = make_client(cfg)
    small = cfg.key("9.0", "whisper_base_xeon/libwhisper.so")  # single part: its ETag is its MD5
    big = cfg.key("9.0", "whisper_tiny.en_xeon/ggml-tiny.en-q5_1.bin")  # multipart ETag
    for key, rel, settings in ((small, "whisper_base_xeon/libwhisper.so", None),
                               (big, "whisper_tiny.en_xeon/ggml-tiny.en-q5_1.bin", TEST_SETTINGS)):
        original = (art / rel).read_bytes()
        _put_behind_the_publishers_back(client, cfg, key, original[::-1], settings)
    assert stored_files(client, cfg, cfg.key("9.0")) != local_files(art)
    # No --force: the release's promise (its metadata, manifest, SHA256SUMS) does not change.
    report = push(art, cfg, version="9.0", settings=TEST_SETTINGS, progress=False)
    assert sorted(report.replaced) == sorted([small, big]) and report.uploaded == []
    assert stored_files(client, cfg, cfg.key("9.0")) == local_files(art)
    again = push(art, cfg, version="9.0", settings=TEST_SETTINGS, progress=False)
    assert again.replaced == [] and len(again.skipped) == len(local_files(art))
    # SeaweedFS gives MD5 ETags (multipart: MD5 of the part MD5s), so the proof costs no read-back.
    for key, rel, parts in ((small, "whisper_base_xeon/libwhisper.so", 0),
                            (big, "whisper_tiny.en_xeon/ggml-tiny.en-q5_1.bin", 3)):
        path = art / rel
        etag = client.head_object(Bucket=cfg.bucket, Key=key)["ETag"].strip('"')
        assert _local_etag(path, path.stat().st_size, parts, TEST_SETTINGS.multipart_chunksize) == etag
    # The same bytes in other parts (as the aws cli's 8 MiB parts would be): the ETag cannot prove
    # them, the read-back does, and nothing is uploaded.
    other_parts = dataclasses.replace(TEST_SETTINGS, multipart_chunksize=6 * 1024 * 1024)
    _put_behind_the_publishers_back(client, cfg, big, (art / "whisper_tiny.en_xeon/ggml-tiny.en-q5_1.bin")
                                    .read_bytes(), other_parts)
    assert client.head_object(Bucket=cfg.bucket, Key=big)["ETag"].strip('"').endswith("-2")
    third = push(art, cfg, version="9.0", settings=TEST_SETTINGS, progress=False)
    assert third.replaced == [] and third.uploaded == [] and big in third.skipped


def test_upload_refused_by_a_bucket_policy_is_one_sentence(tmp_path, store):
    # A real refusal: SeaweedFS enforces this bucket policy (listing and reading stay allowed).
    cfg = store.config().with_target(bucket="whisper-denied", prefix="t/denied")
    client = make_client(cfg)
    client.create_bucket(Bucket=cfg.bucket)
    client.put_bucket_policy(Bucket=cfg.bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                       "Resource": f"arn:aws:s3:::{cfg.bucket}/*"}],
    }))
    art = make_artifacts(tmp_path / "art", models=("base",), big=1000)
    with pytest.raises(PublishError) as e:
        push(art, cfg, version="10.0", settings=TEST_SETTINGS, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"The S3 store at {cfg.endpoint_display} refused to store s3://whisper-denied/t/denied/")
    assert "(AccessDenied: " in msg and "grant that key s3:PutObject on bucket 'whisper-denied'" in msg
    assert "release 10.0 was not published" in msg and cfg.secret_key not in msg
    assert _keys(client, cfg, cfg.key("10.0")) == []


def test_object_lock_bucket_gets_a_checksum_on_every_put(tmp_path, store):
    # AWS refuses PUTs without Content-MD5 or a checksum into an Object Lock bucket. SeaweedFS 4.48
    # does not (measured: a plain PUT there succeeds), so what this proves is that every object,
    # single-part and multipart, went up with a SHA-256 checksum the store kept.
    cfg = store.config().with_target(bucket="whisper-locked", prefix="t/locked")
    client = make_client(cfg)
    client.create_bucket(Bucket=cfg.bucket, ObjectLockEnabledForBucket=True)
    art = make_artifacts(tmp_path / "art")
    report = push(art, cfg, version="11.0", settings=TEST_SETTINGS, progress=False)
    assert report.checksum == "SHA256"
    for rel in local_files(art):
        head = client.head_object(Bucket=cfg.bucket, Key=cfg.key("11.0", rel), ChecksumMode="ENABLED")
        assert head.get("ChecksumSHA256"), f"{rel} was stored without a checksum"
    assert stored_files(client, cfg, cfg.key("11.0")) == local_files(art)
    # An ordinary bucket gets no checksum header (servers that mishandle them stay usable).
    plain = push(art, store.config().with_target(prefix="t/plain"), version="11.0", settings=TEST_SETTINGS,
                 progress=False)
    assert plain.checksum is None
