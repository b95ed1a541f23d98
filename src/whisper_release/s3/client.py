"""The one boto3 S3 client configuration, shared by the publisher, the consumer and the embedded store."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from whisper_release.s3.config import S3Config


def make_client(cfg: S3Config, *, max_attempts: int = 5, connect_timeout: float = 10.0,
                read_timeout: float = 60.0) -> Any:
    """A boto3 S3 client configured for S3-compatible servers as well as AWS."""

    bc = Config(
        region_name=cfg.region,
        signature_version="s3v4",
        # Path style: MinIO/SeaweedFS on an IP or localhost have no per-bucket DNS names.
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": max_attempts},
        # boto3 >= 1.36 adds CRC checksums by default and several S3-compatible servers reject or
        # mishandle them (FACTS.md; botocore#3352, s3transfer#327). Integrity is proven end to end
        # by our sha256 metadata and read-back instead, which works on every server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = boto3.session.Session()
    return session.client(
        # No static keys (None, not ""): boto3's default chain resolves and refreshes them.
        "s3", endpoint_url=cfg.endpoint, aws_access_key_id=cfg.access_key or None,
        aws_secret_access_key=cfg.secret_key or None, aws_session_token=cfg.session_token, config=bc,
    )
