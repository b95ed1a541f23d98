"""Pull one artifact directory of a published release from the bucket, verified, atomically.

Bucket layout (written by publish/push.py): `<prefix>/<version>/manifest.json` and
`<prefix>/<version>/whisper_<model>_xeon/<files>` with a `SHA256SUMS` per directory, and
`<prefix>/latest.json` (publish/pointer.py) naming the latest version and its manifest's sha256.
The manifest is uploaded last, so a version without one is still being published and is never
pulled.

Every file is downloaded by boto3's transfer manager (ranged GETs, retried on broken streams) into
a new directory beside DEST and checked against three independent records before DEST is touched:
the directory's SHA256SUMS, the manifest's subjects, and the sha256 the publisher stored in each
object's metadata. Only then is the directory renamed into place, atomically and without replacing
anything that appeared at DEST meanwhile (consume/place.py), so a failed or interrupted pull leaves
DEST as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from boto3.exceptions import RetriesExceededError, S3TransferFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from whisper_release.consume import place
from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, FetchError, VerificationError
from whisper_release.layout import artifacts as layout
from whisper_release.layout.artifacts import sha256_file
from whisper_release.s3.client import make_client

MANIFEST = layout.MANIFEST
SUMS = layout.SUMS
LATEST = "latest"
# The pointer publish/pointer.py writes; tests/unit/publish/test_pointer.py ties the two sides together.
LATEST_KEY = "latest.json"
MiB = 1 << 20
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Remote:
    """Where releases live: a boto3 S3 client, a bucket and a key prefix (no trailing slash)."""

    client: Any
    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def where(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"


def remote_from_config(config: Any) -> Remote:
    """A Remote for an s3config.S3Config, with the publisher's client settings."""
    return Remote(make_client(config), config.bucket, (config.prefix or "").strip("/"))


@dataclass(frozen=True)
class Release:
    version: str
    published: datetime  # when manifest.json (uploaded last) landed in the bucket


@dataclass
class Listing:
    complete: list[Release] = field(default_factory=list)  # oldest first
    incomplete: list[str] = field(default_factory=list)  # prefixes without a manifest yet

    def versions(self) -> list[str]:
        return [r.version for r in self.complete]

    def describe(self) -> str:
        if not self.complete:
            return "none"
        return ", ".join(self.versions())


def _s3_error(remote: Remote, what: str, e: Exception) -> FetchError:
    code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
    return FetchError(
        f"Could not {what} in s3://{remote.bucket}/{remote.prefix} ({code}); check the endpoint, "
        "credentials and bucket in the S3 settings."
    )


def _subfolders(remote: Remote, key_prefix: str) -> list[str]:
    names: list[str] = []
    pager = remote.client.get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=remote.bucket, Prefix=key_prefix, Delimiter="/"):
        for cp in page.get("CommonPrefixes", ()):
            names.append(cp["Prefix"][len(key_prefix) :].rstrip("/"))
    return names


def _objects(remote: Remote, key_prefix: str) -> Iterator[dict[str, Any]]:
    pager = remote.client.get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=remote.bucket, Prefix=key_prefix):
        yield from page.get("Contents", ())


def list_releases(remote: Remote) -> Listing:
    """Every version under the prefix, split into complete (manifest present) and incomplete."""
    base = remote.key() + "/" if remote.key() else ""
    listing = Listing()
    try:
        for version in _subfolders(remote, base):
            key = f"{base}{version}/{MANIFEST}"
            manifest = [o for o in _objects(remote, key) if o["Key"] == key]
            if manifest:
                listing.complete.append(Release(version, manifest[0]["LastModified"]))
            else:
                listing.incomplete.append(version)
    except Exception as e:  # botocore raises many unrelated types; all mean "cannot list"
        if isinstance(e, (ConfigError, VerificationError)):
            raise
        raise _s3_error(remote, "list releases", e) from None
    listing.complete.sort(key=lambda r: (r.published, r.version))
    return listing


@dataclass(frozen=True)
class Latest:
    """What `<prefix>/latest.json` says: the latest version and the sha256 of its manifest."""

    version: str
    manifest_sha256: str


def _error_code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")) or type(e).__name__


def parse_latest(raw: bytes, where: str) -> Latest:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    version = doc.get("version") if isinstance(doc, dict) else None
    digest = doc.get("manifest_sha256") if isinstance(doc, dict) else None
    # The version becomes a key segment: a pointer must not lead outside <prefix>/.
    if not (isinstance(version, str) and _VERSION_RE.match(version) and version not in (".", "..")) or not (
        isinstance(digest, str) and _SHA256_RE.match(digest)
    ):
        raise VerificationError(
            f"{where} is not a latest-release pointer (expected JSON with 'version' and a 64-hex "
            f"'manifest_sha256', got {raw[:80]!r}); republish the latest release (invoke push) to rewrite it."
        )
    return Latest(version, digest)


def read_latest(remote: Remote) -> Latest | None:
    """The pointer at `<prefix>/latest.json`, or None when there is none."""
    key = remote.key(LATEST_KEY)
    try:
        raw = _get_bytes(remote, key, limit=64 << 10)
    except VerificationError:
        raise
    except Exception as e:
        if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise _s3_error(remote, f"read {key}", e) from None
    return parse_latest(raw, remote.where(LATEST_KEY))


def resolve_release(listing: Listing, release: str, remote: Remote, latest: Latest | None = None) -> str:
    """The version to pull; `latest` is the one `<prefix>/latest.json` names."""
    if release == LATEST:
        if not listing.complete:
            raise ConfigError(f"No complete release is published in {remote.where()}; publish one first.")
        if latest is None:
            raise ConfigError(
                f"No release is marked latest in {remote.where()}: {remote.where(LATEST_KEY)} does not exist "
                f"(complete releases: {listing.describe()}); pull one by name with --release VERSION, or "
                f"publish again with `invoke push`, which writes {LATEST_KEY}."
            )
        if latest.version in listing.versions():
            return latest.version
        raise VerificationError(
            f"{remote.where(LATEST_KEY)} names release {latest.version!r}, which has no {MANIFEST} in "
            f"{remote.where(latest.version)} (complete releases: {listing.describe()}); it may be being "
            "republished: retry later, or pull one by name with --release VERSION."
        )
    if release in listing.versions():
        return release
    if release in listing.incomplete:
        raise VerificationError(
            f"Release {release!r} in {remote.where(release)} has no {MANIFEST} yet, so it is still being "
            f"published (or its publish failed); wait for it or pick a complete one: {listing.describe()}."
        )
    raise ConfigError(
        f"Release {release!r} is not in {remote.where()}: available releases are {listing.describe()} "
        f"(or '{LATEST}')."
    )


def _get_bytes(remote: Remote, key: str, limit: int = 16 << 20) -> bytes:
    obj = remote.client.get_object(Bucket=remote.bucket, Key=key)
    data: bytes = obj["Body"].read(limit + 1)
    if len(data) > limit:
        raise VerificationError(
            f"s3://{remote.bucket}/{key} is larger than {limit} bytes; it is not a {key.rsplit('/', 1)[-1]}."
        )
    return data


def load_manifest(remote: Remote, version: str) -> dict[str, Any]:
    return _load_manifest(remote, version)[0]


def _load_manifest(remote: Remote, version: str) -> tuple[dict[str, Any], str]:
    """The manifest and the sha256 of its bytes (what latest.json records)."""
    key = remote.key(version, MANIFEST)
    try:
        raw = _get_bytes(remote, key)
    except VerificationError:
        raise
    except Exception as e:
        raise _s3_error(remote, f"read {key}", e) from None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise VerificationError(
            f"s3://{remote.bucket}/{key} is not valid JSON ({e}); republish the release."
        ) from None
    if not isinstance(doc, dict):
        raise VerificationError(f"s3://{remote.bucket}/{key} is not a JSON object; republish the release.")
    return doc, hashlib.sha256(raw).hexdigest()


def manifest_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """path relative to the release root -> sha256, from the manifest's subjects.

    The build writes an in-toto Statement (`"subject": [{"name": ..., "digest": {"sha256": ...}}]`);
    a plain `"subjects"` list with flat `{"path"|"name": ..., "sha256": ...}` entries is read too.
    """
    subjects = manifest.get("subject", manifest.get("subjects"))
    if not isinstance(subjects, list) or not subjects:
        raise VerificationError(
            "The release manifest has no 'subject' list of files and digests; republish the release."
        )
    out: dict[str, str] = {}
    for s in subjects:
        name = s.get("name") or s.get("path") if isinstance(s, dict) else None
        digest = (s.get("digest") or {}).get("sha256") if isinstance(s, dict) else None
        digest = digest or (s.get("sha256") if isinstance(s, dict) else None)
        if not isinstance(name, str) or not isinstance(digest, str):
            raise VerificationError(
                f"The release manifest has a malformed subject {s!r}; republish the release."
            )
        name = name[2:] if name.startswith("./") else name
        if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
            raise VerificationError(
                f"The release manifest names an unsafe path {name!r}; republish the release."
            )
        # The same file twice with two digests would let the later entry silently win.
        if out.get(name, digest.lower()) != digest.lower():
            raise VerificationError(
                f"The release manifest lists {name} twice, with sha256 {out[name][:12]}… and "
                f"{digest.lower()[:12]}…; republish the release."
            )
        out[name] = digest.lower()
    return out


def models_in(manifest_files: dict[str, str]) -> list[str]:
    models = {layout.model_of_dir_name(name.split("/", 1)[0]) for name in manifest_files if "/" in name}
    return sorted(m for m in models if m)


def parse_sums(text: str, where: str) -> dict[str, str]:
    """A downloaded SHA256SUMS through the one parser (layout.read_sha256sums)."""
    sums, bad = layout.read_sha256sums(text)
    if bad:
        n, line = bad[0]
        raise VerificationError(
            f"{where} line {n} is not '<sha256>  <file>' naming a file once, inside the directory (an "
            f"unsafe or repeated name counts): {line[:80]!r}; republish the release."
        )
    if not sums:
        raise VerificationError(f"{where} lists no files; republish the release.")
    return sums


@dataclass(frozen=True)
class PullResult:
    version: str
    model: str
    dest: Path
    files: dict[str, str]  # name -> sha256 of everything placed in dest
    already_present: bool = False


@dataclass(frozen=True)
class DownloadSettings:
    """Transfer-manager knobs (tests shrink them to force ranged GETs on small files)."""

    multipart_threshold: int = 64 * MiB  # larger objects are fetched as parallel ranged GETs
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 4
    attempts: int = 5  # per GET: a stream broken mid-body is retried this often


def _check_dir(path: Path, files: dict[str, str]) -> bool:
    """True when `path` holds exactly `files` with those digests (a previous identical pull)."""
    try:
        present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    except OSError:
        return False
    if present != set(files):
        return False
    return all(sha256_file(path / name) == digest for name, digest in files.items())


def _refuse_existing(dest: Path, version: str, dirname: str) -> ConfigError:
    return ConfigError(
        f"{dest} already exists and does not hold release {version} {dirname}; "
        "choose another --dest or pass --force to replace it."
    )


def _check_dest(dest: Path, expected: dict[str, str], version: str, dirname: str, force: bool) -> bool:
    """Before downloading: True when DEST already holds exactly this release; raise if it is in the way."""
    if not os.path.lexists(dest):
        return False
    if dest.is_symlink() and not dest.exists():
        if force:
            return False
        raise ConfigError(
            f"{dest} is a symbolic link to {os.readlink(dest)}, which does not exist; remove the link, "
            "point --dest elsewhere, or pass --force to replace the link with the pulled directory."
        )
    if _check_dir(dest, expected):
        return True
    if not force:
        raise _refuse_existing(dest, version, dirname)
    return False


def _describe_failure(e: Exception, attempts: int) -> str:
    """A short reason for a failed transfer: the S3 error code or the exception's type, no URLs."""
    inner = getattr(e, "last_exception", None)  # boto3's RetriesExceededError: every attempt broke
    if inner is not None:
        return f"{type(inner).__name__} on each of {attempts} attempts"
    return _error_code(e)


def _download_all(
    remote: Remote,
    dir_key: str,
    names: list[str],
    sizes: dict[str, int],
    tmp: Path,
    dest: Path,
    settings: DownloadSettings,
    progress: bool,
) -> dict[str, tuple[str, str | None]]:
    """Download each object into `tmp`; name -> (sha256 of the file, sha256 from the object's metadata)."""

    tc = TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=settings.max_concurrency,
        use_threads=settings.max_concurrency > 1,
        num_download_attempts=settings.attempts,
    )
    # A bar only on a terminal: in a log, tqdm's carriage returns are noise; one line per file instead.
    bars = progress and sys.stderr.isatty()
    got: dict[str, tuple[str, str | None]] = {}
    with tqdm(
        total=sum(sizes[n] for n in names), desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
        leave=False, disable=not bars, file=sys.stderr,
    ) as bar:
        for i, name in enumerate(names, 1):
            key = f"{dir_key}/{name}"
            try:
                head = remote.client.head_object(Bucket=remote.bucket, Key=key)
                meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}.get("sha256")
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)  # licenses/...
                remote.client.download_file(
                    remote.bucket, key, str(tmp / name), Config=tc, Callback=bar.update
                )
            except (ClientError, BotoCoreError, RetriesExceededError, S3TransferFailedError) as e:
                reason = _describe_failure(e, settings.attempts)
                raise FetchError(
                    f"Downloading s3://{remote.bucket}/{key} failed ({reason}); "
                    f"{dest} was left untouched: check that the store is reachable and rerun the pull."
                ) from None
            except OSError as e:
                raise FetchError(
                    f"Writing {name} into {tmp.parent} failed ({e.strerror or type(e).__name__}); {dest} was "
                    "left untouched: free some space or choose another --dest, then rerun the pull."
                ) from None
            got[name] = (sha256_file(tmp / name), meta)
            if progress and not bars:
                info(f"[{i}/{len(names)}] {name} ({sizes[name] / 1e6:.1f} MB) downloaded")
    return got


def pull(
    remote: Remote,
    release: str,
    model: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    dry_run: bool = False,
    settings: DownloadSettings | None = None,
) -> PullResult:
    """Download, verify and atomically place `whisper_<model>_xeon` of `release` at `dest`.

    `release` may be `latest` (what `<prefix>/latest.json` names). DEST already holding the same
    verified files is left as is (already_present); anything else at DEST, including something that
    appears there during the download, is replaced only with `force`. `dry_run` does every check that
    needs no file contents (release, manifest, SHA256SUMS, bucket listing) and downloads nothing.
    """
    settings = settings or DownloadSettings()
    listing = list_releases(remote)
    latest = read_latest(remote) if release == LATEST else None
    version = resolve_release(listing, release, remote, latest)
    manifest, manifest_sha256 = _load_manifest(remote, version)
    if latest is not None and manifest_sha256 != latest.manifest_sha256:
        raise VerificationError(
            f"{remote.where(LATEST_KEY)} says release {version}'s manifest has sha256 "
            f"{latest.manifest_sha256[:12]}…, but {remote.where(version, MANIFEST)} has "
            f"{manifest_sha256[:12]}…; "
            f"the release changed after it was marked latest: rerun the pull, and if this persists pull it "
            f"by name (--release {version}) or republish it (invoke push)."
        )
    listed = manifest_digests(manifest)
    models = models_in(listed)
    if model not in models:
        raise ConfigError(
            f"Model {model!r} is not in release {version} ({remote.where(version)}): available models are "
            f"{', '.join(models) or 'none'}."
        )
    dirname = layout.model_dir_name(model)
    dest_path = Path(dest) if dest is not None else Path(f"{dirname}-{version}")
    dest_path = dest_path.absolute()
    dir_key = remote.key(version, dirname)
    where = f"s3://{remote.bucket}/{dir_key}"
    manifest_where = remote.where(version, MANIFEST)
    sums_where = f"{where}/{SUMS}"

    try:
        sums_bytes = _get_bytes(remote, f"{dir_key}/{SUMS}")
        objects = {o["Key"][len(dir_key) + 1 :]: int(o["Size"]) for o in _objects(remote, dir_key + "/")}
    except VerificationError:
        raise
    except Exception as e:
        raise _s3_error(remote, f"read {dir_key}/{SUMS}", e) from None
    sums = parse_sums(sums_bytes.decode("utf-8", errors="replace"), sums_where)

    expected = dict(sums)
    expected[SUMS] = hashlib.sha256(sums_bytes).hexdigest()
    # The manifest is the root of trust: SHA256SUMS and every file it lists must appear there with
    # the same digest, and nothing the manifest lists for this model may be missing.
    in_manifest = {name.split("/", 1)[1]: d for name, d in listed.items() if name.startswith(dirname + "/")}
    findings: list[str] = []
    for name, digest in sorted(expected.items()):
        if name not in in_manifest:
            if name == SUMS:
                continue  # covered through the files it lists, which must all be in the manifest
            findings.append(f"{name} is in {SUMS} but not in the manifest")
        elif in_manifest[name] != digest:
            source = f"{SUMS} says" if name != SUMS else "the object has"
            findings.append(
                f"{name}: the manifest says sha256 {in_manifest[name][:12]}…, {source} {digest[:12]}…"
            )
    for name in sorted(set(in_manifest) - set(expected)):
        findings.append(f"{name} is in the manifest but not in {SUMS}")
    disagree = len(findings)
    for name in sorted(set(objects) - set(expected)):
        findings.append(f"{name} is in the bucket but not in {SUMS}")
    for name in sorted(set(expected) - set(objects)):
        findings.append(f"{name} is in {SUMS} but missing from the bucket")
    if findings:
        both = f"{manifest_where} and {sums_where} disagree" if disagree else f"{where} is inconsistent"
        raise VerificationError(
            f"Release {version} model {model}: {both}: {'; '.join(findings)}; nothing was written, "
            "republish the release."
        )

    names = sorted(expected)
    total = sum(objects[n] for n in names)
    if dry_run:
        info(f"dry run: would pull {where} ({len(names)} files, {total / 1e6:.1f} MB) -> {dest_path}")
        return PullResult(version, model, dest_path, expected)
    if _check_dest(dest_path, expected, version, dirname, force):
        info(f"{dest_path} already holds release {version} {dirname} (every sha256 matches)")
        return PullResult(version, model, dest_path, expected, already_present=True)

    try:
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = place.staging_dir(dest_path)
    except OSError as e:
        raise ConfigError(
            f"Cannot create a directory in {dest_path.parent} ({e.strerror or type(e).__name__}) to pull "
            f"{dirname} into; choose a --dest in a folder you can write to."
        ) from None
    try:
        info(f"pulling {where} ({len(names)} files, {total / 1e6:.1f} MB) -> {dest_path}")
        got = _download_all(remote, dir_key, names, objects, tmp, dest_path, settings, progress)
        bad: list[str] = []
        for name in names:
            digest, meta = got[name]
            if digest != expected[name]:
                bad.append(f"{name} has sha256 {digest[:12]}…, expected {expected[name][:12]}…")
            elif meta is not None and meta.lower() != digest:
                bad.append(f"{name}'s object metadata says sha256 {meta[:12]}…, its bytes {digest[:12]}…")
        if bad:
            raise VerificationError(
                f"Downloaded files from {where} fail verification: {'; '.join(bad)}; {dest_path} was left "
                "untouched, republish the release or check the bucket for tampering."
            )
        if force:
            place.replace(tmp, dest_path)
        else:
            try:
                place.place_new(tmp, dest_path)
            except FileExistsError:
                # Something appeared at DEST during the download: never ours to remove.
                if _check_dir(dest_path, expected):
                    info(f"{dest_path} appeared meanwhile and holds release {version} {dirname}: kept")
                    return PullResult(version, model, dest_path, expected, already_present=True)
                raise ConfigError(
                    f"{dest_path} appeared while release {version} {dirname} was downloading (another pull "
                    "or program made it); it was left as it is and the download discarded: choose another "
                    "--dest, or pass --force to replace it."
                ) from None
    finally:
        place.remove_entry(tmp)
    info(f"pulled release {version} {dirname} -> {dest_path}")
    return PullResult(version, model, dest_path, expected)
