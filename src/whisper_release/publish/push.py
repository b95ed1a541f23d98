"""Publish a release's artifacts to an S3 store (MinIO, SeaweedFS, AWS), safely and verifiably.

Layout: s3://<bucket>/<prefix>/<version>/manifest.json and
        s3://<bucket>/<prefix>/<version>/whisper_<model>_xeon/<file>.

Rules, in the order push() applies them:
- The local tree is checked first: every SHA256SUMS must list exactly the other files of its
  directory with their true hashes, and manifest.json's subjects must list exactly the files of
  the tree with those same hashes. Nothing is sent otherwise.
- Credentials and bucket are checked with one cheap authenticated call before any upload. A
  bucket with Object Lock gets a SHA-256 checksum on every PUT (such buckets refuse PUTs without
  one on AWS).
- Each object carries its sha256 in its metadata (x-amz-meta-sha256) and is read back (streamed)
  and hashed after upload; a mismatch deletes the object and fails.
- SHA256SUMS files, then manifest.json, go last: a release is visible (counts as published) only
  once its manifest exists, so an interrupted push never shows a partial release.
- A rerun skips an object already there only when its size and sha256 metadata match AND its
  stored bytes are proven: its single-part (or same-part-size multipart) MD5 ETag matches the
  file, else a streamed read-back hashes to the file's sha256. Metadata can be copied onto other
  bytes, so it alone proves nothing; an object that fails the proof is uploaded again.
- A visible release with different content is refused unless force=True (which first hides it by
  deleting its manifest); objects the tree no longer has are deleted, so the release is exactly
  the tree.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError as Boto3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import S3UploadFailedError
from tqdm import tqdm

from whisper_release.core.console import info
from whisper_release.core.errors import PublishError, VerificationError
from whisper_release.core.pins import load_pins
from whisper_release.layout import artifacts as layout
from whisper_release.layout.artifacts import sha256_file
from whisper_release.publish.pointer import update_latest
from whisper_release.publish.target import publish_config
from whisper_release.s3.client import make_client
from whisper_release.s3.config import S3Config, shorten_key

MANIFEST = layout.MANIFEST
SUMS = layout.SUMS
META_SHA256 = "sha256"
MiB = 1024 * 1024
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                      "AuthorizationHeaderMalformed", "InvalidClientTokenId", "403", "Forbidden"}


@dataclass(frozen=True)
class TransferSettings:
    """Multipart and retry knobs (tests shrink them; defaults suit 200 MB-1.5 GB model files)."""

    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 4
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


# ---- local artifacts -----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalObject:
    relpath: str  # posix path under the artifacts dir, also the key under <prefix>/<version>/
    path: Path
    size: int
    sha256: str

    @property
    def phase(self) -> int:
        """Upload order: data first, then SHA256SUMS files, then the manifest (visibility switch)."""
        if self.relpath == MANIFEST:
            return 2
        return 1 if Path(self.relpath).name == SUMS else 0


def _parse_sums(path: Path) -> dict[str, str]:
    try:
        return layout.parse_sha256sums(path.read_text(encoding="utf-8"), str(path))
    except layout.LayoutError as e:
        raise VerificationError(f"{e}; rebuild the artifacts.") from None


def _manifest_subjects(manifest: Any) -> dict[str, str] | None:
    """relpath -> sha256 from the manifest's subjects (the in-toto `subject` list the build writes,
    or the flat `subjects` form pull also reads); None when there is no usable list."""
    subjects = manifest.get("subject", manifest.get("subjects")) if isinstance(manifest, dict) else None
    if not isinstance(subjects, list) or not subjects:
        return None
    out: dict[str, str] = {}
    for s in subjects:
        if not isinstance(s, dict):
            return None
        name = s.get("name") or s.get("path")
        digest = (s.get("digest") or {}).get("sha256") if isinstance(s.get("digest"), dict) else None
        digest = digest or s.get("sha256")
        if not isinstance(name, str) or not isinstance(digest, str):
            return None
        out[name.removeprefix("./")] = digest.lower()
    return out


def _manifest_findings(root: Path, manifest: Any, objects: list[LocalObject]) -> list[str]:
    """Where manifest.json and the tree (whose SHA256SUMS were checked against the bytes) disagree.

    pull trusts the manifest's subjects and the SHA256SUMS both, so a release where they differ
    would be refused by every consumer: it must not leave this machine.
    """
    listed = _manifest_subjects(manifest)
    if listed is None:
        return [f"{MANIFEST} has no 'subject' list of files and sha256 digests (pull refuses such a release)"]
    files = {o.relpath: o for o in objects if o.relpath != MANIFEST}

    def sums_of(rel: str) -> str | None:  # the SHA256SUMS that vouches for rel, if any
        path = Path(rel)
        return None if path.name == SUMS or "/" not in rel else f"{path.parent.as_posix()}/{SUMS}"

    findings: list[str] = []
    for rel in sorted(set(files) - set(listed)):
        findings.append(f"{rel} is in {sums_of(rel) or 'the tree'} but not among {MANIFEST}'s subjects")
    for rel in sorted(set(listed) - set(files)):
        findings.append(f"{MANIFEST} lists {rel}, which is not in the tree")
    for rel in sorted(set(listed) & set(files)):
        if listed[rel] != files[rel].sha256:
            sums = sums_of(rel)
            findings.append(f"{MANIFEST} gives {rel} sha256 {listed[rel][:12]}…, "
                            f"{sums + ' and the file' if sums else 'the file has'} {files[rel].sha256[:12]}…")
    return findings


def scan_artifacts(artifacts_dir: str | Path) -> list[LocalObject]:
    """Every file to publish, hashed, after checking each SHA256SUMS against its directory."""
    root = Path(artifacts_dir)
    if not (root / MANIFEST).is_file():
        raise VerificationError(
            f"{root} has no {MANIFEST}: expected a built release directory (run `invoke build` first)."
        )
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise VerificationError(
            f"{root / MANIFEST} is not valid JSON ({e}); rebuild the artifacts."
        ) from None
    objects: list[LocalObject] = []
    findings: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            findings.append(f"{rel} is a symlink (object stores keep none; dereference it in the build)")
            continue
        if path.is_file():
            objects.append(LocalObject(rel, path, path.stat().st_size, sha256_file(path)))
    by_dir: dict[str, dict[str, LocalObject]] = {}
    for o in objects:
        parent = Path(o.relpath).parent.as_posix()
        by_dir.setdefault(parent, {})[Path(o.relpath).name] = o
    for d, files in sorted(by_dir.items()):
        if d == ".":
            continue
        if SUMS not in files:
            findings.append(f"{d}/ has no {SUMS}")
            continue
        listed = _parse_sums(files[SUMS].path)
        present = {n for n in files if n != SUMS}
        for name in sorted(present - set(listed)):
            findings.append(f"{d}/{name} is not listed in {d}/{SUMS}")
        for name in sorted(set(listed) - present):
            findings.append(f"{d}/{SUMS} lists {name}, which is missing")
        for name in sorted(present & set(listed)):
            if files[name].sha256 != listed[name]:
                findings.append(
                    f"{d}/{name} has sha256 {files[name].sha256[:12]}…, {SUMS} says {listed[name][:12]}…"
                )
    if findings:
        raise VerificationError(
            f"The artifacts in {root} do not match their checksums ({len(findings)} finding(s): "
            + "; ".join(findings) + "); rebuild them, nothing was published."
        )
    # Only now: with every SHA256SUMS proven against its files, a manifest finding names both sides.
    findings = _manifest_findings(root, manifest, objects)
    if findings:
        raise VerificationError(
            f"{root / MANIFEST} and the {SUMS} files beside it disagree ({len(findings)} finding(s): "
            + "; ".join(findings) + "); rebuild the artifacts, nothing was published."
        )
    if not any(o.phase == 1 for o in objects):
        raise VerificationError(
            f"{root} holds no whisper_<model>_xeon/{SUMS}: nothing to publish; run `invoke build`."
        )
    return sorted(objects, key=lambda o: (o.phase, o.relpath))


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version or ""):
        raise PublishError(
            f"The release version {version!r} cannot be a path segment: use letters, digits and ._+- "
            "(set [release] version in release.toml)."
        )
    return version


# ---- client ------------------------------------------------------------------------------------


def _error_code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    return code or str(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _describe(e: Exception) -> str:

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(e).__name__}: {e}"


def check_access(client: Any, cfg: S3Config, *, create_bucket: bool = False) -> bool:
    """Prove endpoint, credentials and bucket with one cheap call; create the bucket only if allowed.

    Returns True if the bucket was created.
    """

    where = f"the S3 store at {cfg.endpoint_display}"
    try:
        client.list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.key() + "/" if cfg.prefix else "", MaxKeys=1)
        return False
    except ClientError as e:
        code = _error_code(e)
        if code in _CREDENTIAL_ERRORS:
            raise PublishError(
                f"{where} rejected the credentials (access key {shorten_key(cfg.access_key)} from "
                f"{cfg.source}: {code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, nothing "
                "was uploaded."
            ) from None
        if code == "AccessDenied":
            raise PublishError(
                f"{where} denied access key {shorten_key(cfg.access_key)} listing bucket {cfg.bucket!r} "
                "(AccessDenied); grant it list/read/write on the bucket, nothing was uploaded."
            ) from None
        if code not in ("NoSuchBucket", "404"):
            raise PublishError(
                f"{where} refused to list bucket {cfg.bucket!r} ({_describe(e)}); nothing was uploaded."
            ) from None
    except BotoCoreError as e:
        raise PublishError(
            f"Cannot reach {where} ({_describe(e)}); check the endpoint URL and that the server runs, "
            "nothing was uploaded."
        ) from None
    if not (create_bucket or cfg.create_bucket):
        raise PublishError(
            f"Bucket {cfg.bucket!r} does not exist at {cfg.endpoint_display}; create it (e.g. `aws s3 mb "
            f"s3://{cfg.bucket}` or `mc mb ALIAS/{cfg.bucket}`) or pass --create-bucket."
        )
    try:
        client.create_bucket(Bucket=cfg.bucket)
    except (BotoCoreError, ClientError) as e:
        if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise PublishError(
                f"Creating bucket {cfg.bucket!r} at {cfg.endpoint_display} failed ({_describe(e)}); "
                "create it yourself or check the key's permissions."
            ) from None
    info(f"created bucket {cfg.bucket!r} at {cfg.endpoint_display}")
    return True


# ---- the push ------------------------------------------------------------------------------


@dataclass
class PlannedObject:
    key: str
    local: LocalObject
    action: str  # "upload" | "skip" | "replace"


@dataclass
class PushReport:
    endpoint: str
    bucket: str
    version: str
    release_key: str  # <prefix>/<version>
    dry_run: bool = False
    plan: list[PlannedObject] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    bucket_created: bool = False
    checksum: str | None = None  # the checksum algorithm sent with every PUT (Object Lock buckets)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.release_key}/"

    @property
    def manifest_key(self) -> str:
        return f"{self.release_key}/{MANIFEST}"


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".md"):
        return "text/markdown; charset=utf-8"
    if name == SUMS:
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


@dataclass(frozen=True)
class RemoteObject:
    size: int
    sha256: str | None  # the x-amz-meta-sha256 the publisher wrote (anyone with write access can copy it)
    etag: str


def _remote_state(client: Any, cfg: S3Config, release_key: str) -> dict[str, RemoteObject]:
    """key -> size, sha256 metadata and ETag of every object under the release."""
    out: dict[str, RemoteObject] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=cfg.bucket, Prefix=release_key + "/"):
        for obj in page.get("Contents", []):
            head = client.head_object(Bucket=cfg.bucket, Key=obj["Key"])
            out[obj["Key"]] = RemoteObject(int(head["ContentLength"]),
                                           head.get("Metadata", {}).get(META_SHA256),
                                           str(head.get("ETag", "")).strip('"').lower())
    return out


def _local_etag(path: Path, size: int, parts: int, part_size: int) -> str | None:
    """The ETag an unencrypted store gives `path` uploaded in one part (parts=0) or in `parts`
    parts of `part_size`; None when that part size cannot give that many parts."""
    if parts and -(-size // part_size) != parts:
        return None
    whole, digests = hashlib.md5(usedforsecurity=False), []
    with path.open("rb") as f:
        while block := f.read(part_size if parts else MiB):
            if parts:
                digests.append(hashlib.md5(block, usedforsecurity=False).digest())
            else:
                whole.update(block)
    if not parts:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{parts}"


def _stored_bytes_match(client: Any, cfg: S3Config, key: str, local: LocalObject, remote: RemoteObject,
                        settings: TransferSettings, chunk: int = MiB) -> bool:
    """Whether the stored object holds exactly the local bytes, not just their metadata.

    The ETag settles it cheaply when the store computes it as MD5 (single part, or multipart with
    our part size); otherwise (SSE-KMS, another part size, a mismatch) a streamed read-back does.
    """
    m = re.fullmatch(r"([0-9a-f]{32})(?:-([0-9]+))?", remote.etag)
    if m and _local_etag(local.path, local.size, int(m.group(2) or 0),
                         settings.multipart_chunksize) == remote.etag:
        return True
    h = hashlib.sha256()
    for block in client.get_object(Bucket=cfg.bucket, Key=key)["Body"].iter_chunks(chunk):
        h.update(block)
    return h.hexdigest() == local.sha256


def _verify_remote(client: Any, cfg: S3Config, key: str, local: LocalObject, chunk: int = MiB) -> None:
    """Stream the stored object back and compare size, metadata and sha256 with the local file."""
    resp = client.get_object(Bucket=cfg.bucket, Key=key)
    meta = resp.get("Metadata", {}).get(META_SHA256)
    h = hashlib.sha256()
    n = 0
    for block in resp["Body"].iter_chunks(chunk):
        h.update(block)
        n += len(block)
    problems = []
    if n != local.size:
        problems.append(f"size {n} instead of {local.size}")
    if h.hexdigest() != local.sha256:
        problems.append(f"sha256 {h.hexdigest()[:12]}… instead of {local.sha256[:12]}…")
    if meta != local.sha256:
        problems.append(f"sha256 metadata {meta!r} instead of the file's")
    if problems:
        client.delete_object(Bucket=cfg.bucket, Key=key)
        raise PublishError(
            f"Read-back of s3://{cfg.bucket}/{key} does not match {local.path} ({', '.join(problems)}); "
            "the object was deleted and the release stays unpublished, rerun the push."
        )


_ACCESS_REFUSALS = ("AccessDenied", "AllAccessDisabled", "AccountProblem")
_REFUSALS = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidRequest", "InvalidObjectState",
             "MethodNotAllowed", "NotImplemented", "QuotaExceeded", "EntityTooLarge", "InvalidBucketState"}


def _refusal(e: BaseException) -> str | None:
    """'Code: message' when the store answered an upload with a definite no, else None (a transfer
    failure that a rerun may cure). boto3's upload_file wraps the ClientError in its own
    S3UploadFailedError, whose cause is only in __context__."""

    seen: BaseException | None = e
    while seen is not None and not isinstance(seen, ClientError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or _error_code(seen) not in _REFUSALS or getattr(seen, "operation_name", "") not in (
            "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return None
    return _describe(seen)


def _refusal_error(e: BaseException, cfg: S3Config, key: str, version: str) -> PublishError | None:
    refusal = _refusal(e)
    if refusal is None:
        return None
    todo = (f"grant that key s3:PutObject on bucket {cfg.bucket!r} (check its bucket policy)"
            if refusal.startswith(_ACCESS_REFUSALS) else "change what the store objects to")
    return PublishError(
        f"The S3 store at {cfg.endpoint_display} refused to store s3://{cfg.bucket}/{key} for access key "
        f"{shorten_key(cfg.access_key)} ({refusal}): {todo}; release {version} was not published (its "
        "manifest was not written)."
    )


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def push(
    artifacts_dir: str | Path,
    config: S3Config,
    *,
    version: str,
    force: bool = False,
    dry_run: bool = False,
    create_bucket: bool = False,
    settings: TransferSettings | None = None,
    progress: bool = True,
    on_object: Callable[[str], None] | None = None,
    force_latest: bool = False,
) -> PushReport:
    """Upload the release in `artifacts_dir` as <prefix>/<version>/ (see the module docstring).

    `on_object(key)` is called after each object is uploaded and verified (progress hooks, tests).
    """
    settings = settings or TransferSettings()
    check_version(version)
    objects = scan_artifacts(artifacts_dir)
    release_key = config.key(version)
    report = PushReport(config.endpoint_display, config.bucket, version, release_key, dry_run=dry_run)

    if dry_run:
        report.plan = [PlannedObject(f"{release_key}/{o.relpath}", o, "upload") for o in objects]
        info(f"dry run: would publish {len(objects)} objects "
             f"({_fmt_size(sum(o.size for o in objects))}) to {report.location} at {config.endpoint_display} "
             "in this order (the store was not contacted):")
        for p in report.plan:
            info(f"  {p.key}  {_fmt_size(p.local.size)}  sha256 {p.local.sha256[:16]}…")
        return report

    client = make_client(config, max_attempts=settings.max_attempts,
                         connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    report.bucket_created = check_access(client, config, create_bucket=create_bucket)
    report.checksum = _checksum_for(client, config)

    manifest_key = report.manifest_key
    differing: list[str] = []
    try:
        remote = _remote_state(client, config, release_key)
        for o in objects:
            key = f"{release_key}/{o.relpath}"
            r = remote.get(key)
            if r is None:
                report.plan.append(PlannedObject(key, o, "upload"))
            elif (r.size, r.sha256) != (o.size, o.sha256):
                report.plan.append(PlannedObject(key, o, "replace"))
                differing.append(o.relpath)
            elif _stored_bytes_match(client, config, key, o, r, settings):
                report.plan.append(PlannedObject(key, o, "skip"))
            else:
                # The release claims these bytes (metadata) but holds others: restoring them changes
                # nothing a reader was promised, so it needs no --force.
                info(f"s3://{config.bucket}/{key} carries this file's sha256 metadata but other bytes: "
                     "uploading it again")
                report.plan.append(PlannedObject(key, o, "replace"))
    except (BotoCoreError, ClientError) as e:
        raise PublishError(
            f"Reading what {report.location} holds failed ({_describe(e)}); nothing was uploaded."
        ) from None
    local_keys = {p.key for p in report.plan}
    extras = sorted(k for k in remote if k not in local_keys)
    visible = manifest_key in remote
    changed = differing + [k[len(release_key) + 1:] for k in extras]
    if visible and changed:
        if not force:
            shown = ", ".join(changed[:5]) + (", …" if len(changed) > 5 else "")
            raise PublishError(
                f"Release {version} already exists at {report.location} with different content "
                f"({len(changed)} object(s) differ: {shown}); it was left unchanged: bump [release] "
                "version in release.toml, or pass --force to replace it."
            )
        # Hide the release first, so no reader ever sees a mix of old and new objects.
        info(f"--force: replacing release {version} at {report.location} (hidden until complete)")
        _delete(client, config, [manifest_key], report)
        for p in report.plan:
            if p.key == manifest_key and p.action == "skip":
                p.action = "replace"
    if extras:
        # Leftovers of an older attempt or of the replaced release: the release must be exactly the tree.
        _delete(client, config, extras, report)

    todo = [p for p in report.plan if p.action != "skip"]
    report.skipped = [p.key for p in report.plan if p.action == "skip"]
    if not todo:
        info(f"release {version} is already published at {report.location}: nothing to upload")
    else:
        _upload_all(client, config, todo, settings, report, progress, on_object)
    update_latest(client, config, report, force_latest=force_latest)  # last: publish/pointer.py
    return report


def _checksum_for(client: Any, cfg: S3Config) -> str | None:
    """"SHA256" when the bucket has Object Lock, else None (no checksum header at all).

    AWS refuses a PUT into an Object Lock bucket that carries neither Content-MD5 nor a checksum;
    elsewhere checksums stay off, because several S3-compatible servers mishandle them (FACTS.md).
    A store that cannot say (no such API, no permission) gets none: if it then refuses an upload,
    the refusal is reported in one sentence.
    """

    try:
        conf = client.get_object_lock_configuration(Bucket=cfg.bucket)
    except (BotoCoreError, ClientError):
        return None
    if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        return None
    info(f"bucket {cfg.bucket!r} has Object Lock: every upload carries a SHA-256 checksum")
    return "SHA256"


def _delete(client: Any, cfg: S3Config, keys: Iterable[str], report: PushReport) -> None:

    for key in keys:
        try:
            client.delete_object(Bucket=cfg.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise PublishError(
                f"Deleting s3://{cfg.bucket}/{key} failed ({_describe(e)}); rerun the push."
            ) from None
        report.deleted.append(key)


def _upload_all(client: Any, cfg: S3Config, todo: list[PlannedObject], settings: TransferSettings,
                report: PushReport, progress: bool, on_object: Callable[[str], None] | None) -> None:

    tc = TransferConfig(multipart_threshold=settings.multipart_threshold,
                        multipart_chunksize=settings.multipart_chunksize,
                        max_concurrency=settings.max_concurrency, use_threads=settings.max_concurrency > 1)
    total = sum(p.local.size for p in todo)
    # Bars only on a terminal; logs (CI) get one line per verified object instead.
    bars = progress and sys.stderr.isatty()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"release {report.version}",
              file=sys.stderr, disable=not bars, position=0) as overall:
        for i, p in enumerate(todo, 1):
            name = p.local.relpath
            with tqdm(total=p.local.size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"[{i}/{len(todo)}] {name}", file=sys.stderr, disable=not bars,
                      position=1, leave=False) as bar:

                def advance(n: int, bar: Any = bar) -> None:
                    bar.update(n)
                    overall.update(n)

                extra: dict[str, Any] = {"Metadata": {META_SHA256: p.local.sha256},
                                         "ContentType": _content_type(Path(name).name)}
                if report.checksum:
                    extra["ChecksumAlgorithm"] = report.checksum
                try:
                    client.upload_file(str(p.local.path), cfg.bucket, p.key, Config=tc, Callback=advance,
                                       ExtraArgs=extra)
                    _verify_remote(client, cfg, p.key, p.local)
                except (Boto3UploadFailedError, S3UploadFailedError, BotoCoreError, ClientError) as e:
                    refused = _refusal_error(e, cfg, p.key, report.version)
                    if refused:
                        raise refused from None
                    raise PublishError(
                        f"Uploading {name} to s3://{cfg.bucket}/{p.key} failed after {settings.max_attempts} "
                        f"attempts ({_describe(e)}); release {report.version} was not published (its "
                        "manifest was not written), rerun the push once the store is reachable."
                    ) from None
            (report.replaced if p.action == "replace" else report.uploaded).append(p.key)
            report.bytes_uploaded += p.local.size
            if progress and not bars:
                info(f"[{i}/{len(todo)}] {p.key} ({_fmt_size(p.local.size)}) uploaded and verified")
            if on_object is not None:
                on_object(p.key)


def print_report(report: PushReport, config: S3Config, artifacts_dir: str | Path | None = None,
                 *, show_sums: bool = True) -> None:
    """Say where the release is, how to list and download it, and (optionally) its SHA256SUMS."""
    out = sys.stdout
    if report.dry_run:
        print(f"dry run: {len(report.plan)} objects would be published to {report.location}", file=out)
        return
    print(f"release {report.version} published at {report.location} on {report.endpoint}", file=out)
    print(f"  uploaded {len(report.uploaded)}, replaced {len(report.replaced)}, already present "
          f"{len(report.skipped)}, deleted {len(report.deleted)} ({_fmt_size(report.bytes_uploaded)} sent)",
          file=out)
    ep = f" --endpoint-url {config.endpoint}" if config.endpoint else ""
    creds = ("`invoke store --show-credentials` writes the credentials to an env file; source it, then"
             if config.create_bucket else "with the same AWS_* variables set:")
    print(f"  {creds}", file=out)
    print(f"    list:     aws{ep} s3 ls --recursive {report.location}", file=out)
    print(f"    download: aws{ep} s3 cp --recursive {report.location} ./whisper-{report.version}/", file=out)
    if show_sums and artifacts_dir is not None:
        for sums in sorted(Path(artifacts_dir).glob(f"*/{SUMS}")):
            rel = sums.relative_to(artifacts_dir).as_posix()
            print(f"{report.location}{rel}:", file=out)
            print(sums.read_text(encoding="utf-8").rstrip("\n"), file=out)


def push_release(
    artifacts_dir: str | Path = "dist/release_artifacts",
    *,
    version: str | None = None,
    endpoint: str | None = None,
    config_file: str | Path | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    force: bool = False,
    create_bucket: bool = False,
    dry_run: bool = False,
    store_root: str | Path | None = None,
    force_latest: bool = False,
) -> PushReport:
    """`invoke push`: resolve the target (configured, else the embedded store), push, print the report."""

    version = version or load_pins().release_version
    # Prove the artifacts before starting a store or touching the network.
    scan_artifacts(artifacts_dir)
    cfg = publish_config(config_file=config_file, endpoint=endpoint, bucket=bucket, prefix=prefix,
                         store_root=store_root, dry_run=dry_run)
    info(f"publishing to {cfg!r}")
    report = push(artifacts_dir, cfg, version=version, force=force, dry_run=dry_run,
                  create_bucket=create_bucket, force_latest=force_latest)
    print_report(report, cfg, artifacts_dir)
    return report
