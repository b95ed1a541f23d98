"""Pull one artifact directory of a published release from the bucket, verified, atomically.

Bucket layout (written by publish.py): `<prefix>/<version>/manifest.json` and
`<prefix>/<version>/whisper_<model>_xeon/<files>` with a `SHA256SUMS` per directory. The manifest
is uploaded last, so a version without one is still being published and is never pulled.

Every file is downloaded into a temporary directory beside DEST, hashed while it streams, and
checked against three independent records before DEST is touched: the directory's SHA256SUMS,
the manifest's subjects, and the sha256 the publisher stored in each object's metadata. Only then
is the directory renamed into place, so a failed or interrupted pull leaves DEST as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, FetchError, VerificationError
from whisper_release.layout.artifacts import sha256_file

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
LATEST = "latest"
_CHUNK = 1 << 20


def artifact_dirname(model: str) -> str:
    return f"whisper_{model}_xeon"


def model_of_dirname(name: str) -> str | None:
    if name.startswith("whisper_") and name.endswith("_xeon") and len(name) > len("whisper__xeon"):
        return name[len("whisper_") : -len("_xeon")]
    return None


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
    from whisper_release.publish.push import make_client

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


def resolve_release(listing: Listing, release: str, remote: Remote) -> str:
    """The version to pull; `latest` is the one whose manifest was uploaded most recently."""
    if release == LATEST:
        if not listing.complete:
            raise ConfigError(f"No complete release is published in {remote.where()}; publish one first.")
        return listing.complete[-1].version
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
    return doc


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
        out[name.lstrip("./")] = digest.lower()
    return out


def models_in(manifest_files: dict[str, str]) -> list[str]:
    models = {model_of_dirname(name.split("/", 1)[0]) for name in manifest_files if "/" in name}
    return sorted(m for m in models if m)


def parse_sums(text: str, where: str) -> dict[str, str]:
    """`<sha256>  <name>` lines (sha256sum's format; a `*` binary marker is allowed)."""
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise VerificationError(
                f"{where} line {n} is not '<sha256>  <file>': {line[:80]!r}; republish the release."
            )
        name = parts[1].strip().lstrip("*")
        if name.startswith("./"):
            name = name[2:]
        # A subdirectory (licenses/...) is fine; a way out of the destination or an odd path is not.
        if name.startswith("/") or any(x in ("", ".", "..") for x in name.split("/")) or name in sums:
            raise VerificationError(
                f"{where} line {n} names an unsafe or repeated file {name!r}; republish the release."
            )
        sums[name] = parts[0].lower()
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


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=not enabled,
        file=sys.stderr,
    )


def _download(remote: Remote, key: str, out: Path, bar: Any) -> tuple[str, str | None]:
    """Stream one object to `out`; returns (sha256 of the bytes, sha256 from the object's metadata)."""
    obj = remote.client.get_object(Bucket=remote.bucket, Key=key)
    meta = {k.lower(): v for k, v in (obj.get("Metadata") or {}).items()}
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for chunk in obj["Body"].iter_chunks(_CHUNK):
            h.update(chunk)
            f.write(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest(), meta.get("sha256")


def _check_dir(path: Path, files: dict[str, str]) -> bool:
    """True when `path` holds exactly `files` with those digests (a previous identical pull)."""
    try:
        present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    except OSError:
        return False
    if present != set(files):
        return False
    return all(sha256_file(path / name) == digest for name, digest in files.items())


def pull(
    remote: Remote,
    release: str,
    model: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    dry_run: bool = False,
) -> PullResult:
    """Download, verify and atomically place `whisper_<model>_xeon` of `release` at `dest`.

    `release` may be `latest`. DEST already holding the same verified files is left as is
    (already_present); DEST holding anything else is replaced only with `force`. `dry_run` does every
    check that needs no file contents (release, manifest, SHA256SUMS, bucket listing) and downloads
    nothing.
    """
    listing = list_releases(remote)
    version = resolve_release(listing, release, remote)
    manifest = load_manifest(remote, version)
    listed = manifest_digests(manifest)
    models = models_in(listed)
    if model not in models:
        raise ConfigError(
            f"Model {model!r} is not in release {version} ({remote.where(version)}): available models are "
            f"{', '.join(models) or 'none'}."
        )
    dirname = artifact_dirname(model)
    dest_path = Path(dest) if dest is not None else Path(f"{dirname}-{version}")
    dest_path = dest_path.absolute()
    dir_key = remote.key(version, dirname)
    where = f"s3://{remote.bucket}/{dir_key}"

    try:
        sums_bytes = _get_bytes(remote, f"{dir_key}/{SUMS}")
        objects = {o["Key"][len(dir_key) + 1 :]: int(o["Size"]) for o in _objects(remote, dir_key + "/")}
    except VerificationError:
        raise
    except Exception as e:
        raise _s3_error(remote, f"read {dir_key}/{SUMS}", e) from None
    sums = parse_sums(sums_bytes.decode("utf-8", errors="replace"), f"{where}/{SUMS}")

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
            findings.append(f"{name} is not listed in the manifest")
        elif in_manifest[name] != digest:
            source = SUMS if name != SUMS else "the object"
            findings.append(
                f"{name}: the manifest says sha256 {in_manifest[name][:12]}…, {source} says {digest[:12]}…"
            )
    for name in sorted(set(in_manifest) - set(expected)):
        findings.append(f"{name} is in the manifest but not in {SUMS}")
    for name in sorted(set(objects) - set(expected)):
        findings.append(f"{name} is in the bucket but not in {SUMS}")
    for name in sorted(set(expected) - set(objects)):
        findings.append(f"{name} is in {SUMS} but missing from the bucket")
    if findings:
        raise VerificationError(
            f"Release {version} model {model} at {where} is inconsistent: {'; '.join(findings)}; "
            "nothing was written, republish the release."
        )

    if dry_run:
        total = sum(objects[n] for n in expected)
        info(f"dry run: would pull {where} ({len(expected)} files, {total / 1e6:.1f} MB) -> {dest_path}")
        return PullResult(version, model, dest_path, expected)
    if dest_path.exists():
        if _check_dir(dest_path, expected):
            info(f"{dest_path} already holds release {version} {dirname} (every sha256 matches)")
            return PullResult(version, model, dest_path, expected, already_present=True)
        if not force:
            raise ConfigError(
                f"{dest_path} already exists and does not hold release {version} {dirname}; "
                "choose another --dest or pass --force to replace it."
            )

    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_path.name}.partial-", dir=dest_path.parent))
    try:
        total = sum(objects[n] for n in expected)
        info(f"pulling {where} ({len(expected)} files, {total / 1e6:.1f} MB) -> {dest_path}")
        bad: list[str] = []
        with _progress(total, dirname, progress) as bar:
            for name in sorted(expected):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)  # licenses/...
                got, meta = _download(remote, f"{dir_key}/{name}", tmp / name, bar)
                if got != expected[name]:
                    bad.append(f"{name} has sha256 {got[:12]}…, expected {expected[name][:12]}…")
                elif meta is not None and meta.lower() != got:
                    bad.append(f"{name}'s object metadata says sha256 {meta[:12]}…, its bytes {got[:12]}…")
        if bad:
            raise VerificationError(
                f"Downloaded files from {where} fail verification: {'; '.join(bad)}; {dest_path} was left "
                "untouched, republish the release or check the bucket for tampering."
            )
        for name in expected:
            os.chmod(tmp / name, 0o644)
        _place(tmp, dest_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info(f"pulled release {version} {dirname} -> {dest_path}")
    return PullResult(version, model, dest_path, expected)


def _place(tmp: Path, dest: Path) -> None:
    """Rename the verified `tmp` to `dest`; an existing dest is swapped out, then removed."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
