"""`<prefix>/latest.json`: the release `pull --release latest` gets, moved only forward.

"Latest" once meant the newest manifest upload, so a `push --force` of an old version made it
latest. The pointer names a version and the sha256 of that version's manifest. push() writes it
after the release's manifest, so it never names a release that is not visible, and moves it to a
lower version (by version_key) only when asked (force_latest). consume/pull.py reads it and checks
the manifest it names against the recorded sha256.

minio/push_to_minio.sh writes the same bytes and applies the same rules in bash and awk, so either
publisher can move a pointer the other wrote. To keep the two provably identical, a pointer counts
as valid only when it is byte for byte what pointer_bytes() makes of a version and a digest
(parse_pointer); tests/unit/publish/test_pointer.py checks both sides against one table of cases.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from whisper_release.core.console import info
from whisper_release.core.errors import PublishError
from whisper_release.layout import artifacts as layout
from whisper_release.s3.config import S3Config

LATEST_KEY = "latest.json"
MANIFEST = layout.MANIFEST
# A pointer is small; anything longer is not one (the shell publisher applies the same bound).
MAX_POINTER_BYTES = 64 << 10
# Exactly the bytes pointer_bytes() writes for a version push accepts and a lowercase sha256.
_POINTER_RE = re.compile(
    rb'\{\n  "version": "([A-Za-z0-9][A-Za-z0-9._+-]*)",\n  "manifest_sha256": "([0-9a-f]{64})"\n\}\n'
)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions by their runs of digits as numbers: 1.8.5-r2 < 1.8.5-r10 < 1.9.0.

    A version that extends another (1.8.5-r1 after 1.8.5) comes later, so a pre-release suffix
    such as -rc1 also sorts after its final version: name such releases so they sort, or move the
    pointer with force_latest.
    """
    return tuple((1, int(run)) if run.isdigit() else (0, run) for run in re.findall(r"\d+|\D+", version))


def pointer_bytes(version: str, manifest_sha256: str) -> bytes:
    return (json.dumps({"version": version, "manifest_sha256": manifest_sha256}, indent=2) + "\n").encode()


def parse_pointer(raw: bytes) -> str | None:
    """The version a pointer names, or None when `raw` is not exactly what a publisher writes."""
    m = _POINTER_RE.fullmatch(raw) if len(raw) <= MAX_POINTER_BYTES else None
    return m[1].decode() if m else None


def _code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")) or type(e).__name__


def read_pointer(client: Any, cfg: S3Config) -> bytes | None:
    """The current pointer's bytes, None when there is none; a read that fails is an error, never "none"."""
    key = cfg.key(LATEST_KEY)
    try:
        # One byte past the bound tells a pointer of exactly MAX_POINTER_BYTES from a longer object.
        return bytes(client.get_object(Bucket=cfg.bucket, Key=key)["Body"].read(MAX_POINTER_BYTES + 1))
    except Exception as e:  # botocore raises many types; only "not found" means no pointer yet
        if _code(e) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise PublishError(
            f"Reading s3://{cfg.bucket}/{key} failed ({_code(e)}); the latest-release pointer was left "
            "unchanged: rerun the push (it uploads nothing already there)."
        ) from None


def update_latest(client: Any, cfg: S3Config, report: Any, *, force_latest: bool = False) -> None:
    """Point latest.json at the release push() just made visible, unless a newer one is latest."""
    if report.dry_run:
        return
    manifest = next((p.local for p in report.plan if p.local.relpath == MANIFEST), None)
    if manifest is None:
        return
    version = report.version
    key = cfg.key(LATEST_KEY)
    where = f"s3://{cfg.bucket}/{key}"
    current = read_pointer(client, cfg)
    was = parse_pointer(current) if current is not None else None
    if current is not None and not force_latest:
        if was is None:
            raise PublishError(
                f"Release {version} was published, but {where} is not a valid pointer, so it was not "
                "replaced; pass --force-latest to overwrite it with this release."
            )
        if version_key(was) > version_key(version):
            info(f"{where} stays at {was}, which is newer than {version} (--force-latest moves it back)")
            return
    data = pointer_bytes(version, manifest.sha256)
    if current == data:
        return
    digest = hashlib.sha256(data).hexdigest()
    try:
        client.put_object(Bucket=cfg.bucket, Key=key, Body=data, ContentType="application/json",
                          Metadata={"sha256": digest})
        stored = client.get_object(Bucket=cfg.bucket, Key=key)["Body"].read(64 << 10)
    except Exception as e:
        raise PublishError(
            f"Release {version} was published, but writing {where} failed ({_code(e)}); `pull --release "
            "latest` still gets the previous one: rerun the push (it uploads nothing already there)."
        ) from None
    if stored != data:
        raise PublishError(
            f"Release {version} was published, but reading back {where} gave other bytes than were written; "
            "rerun the push."
        )
    info(f"{where} -> {version}" + (f" (was {was})" if was else ""))
