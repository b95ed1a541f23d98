"""Where releases are published: endpoint, bucket, prefix, region and credentials, validated up front.

Sources, first hit wins per setting:
  1. explicit arguments (tasks' --bucket/--prefix/--endpoint),
  2. the environment: standard AWS names (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) then MinIO-style
     names (MINIO_ENDPOINT, MINIO_ACCESS_KEY, ...),
  3. a TOML config file (--config, else $WHISPER_RELEASE_S3_CONFIG) with an [s3] table,
  4. release.toml's [publish] table (bucket and prefix only; credentials never live in pins).

With no static keys anywhere, the credentials come from boto3's default chain (AWS_PROFILE and the
~/.aws files, SSO, web identity, container and instance roles): `resolve_chain` proves up front
that it yields some, and clients get no keys so that boto3 refreshes temporary ones itself.
Without an endpoint, only a variable that names such a source (CHAIN_VARS) selects AWS S3; a
machine with bare ~/.aws files keeps publishing to the embedded store.

Secrets never appear in repr, logs or error messages; the access key is shown shortened.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError
from whisper_release.core.redact import redact_url

DEFAULT_REGION = "us-east-1"
CONFIG_FILE_VAR = "WHISPER_RELEASE_S3_CONFIG"

# Per setting, the environment variables consulted in order (AWS names first: the AWS SDKs and CLI
# read them too, so one set of variables serves every client).
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT"),
    "access_key": ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER"),
    "secret_key": ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD"),
    "session_token": ("AWS_SESSION_TOKEN",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION"),
    "bucket": ("WHISPER_RELEASE_BUCKET", "MINIO_BUCKET"),
    "prefix": ("WHISPER_RELEASE_PREFIX", "MINIO_PREFIX"),
}
# Variables that name a credential source of boto3's default chain: each means "a store is configured".
CHAIN_VARS = (
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)
FILE_KEYS = ("endpoint", "access_key", "secret_key", "session_token", "region", "bucket", "prefix")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PREFIX_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._+=@-]+$")


def shorten_key(access_key: str) -> str:
    """An access key as shown to humans: enough to tell two apart, not enough to use."""
    return access_key[:4] + "…" if len(access_key) > 6 else "…"


@dataclass(frozen=True)
class S3Config:
    """A validated publishing target. `endpoint` None means AWS S3 itself."""

    endpoint: str | None
    bucket: str
    prefix: str
    region: str = DEFAULT_REGION
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)
    # Where the settings came from, for messages ("environment", "config file X", "embedded store").
    source: str = "environment"
    # Only the embedded store's own bucket is created on demand; see docs/publish.md.
    create_bucket: bool = False

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"region={self.region!r}, access_key={shorten_key(self.access_key)!r}, secret_key='***', "
            f"source={self.source!r})"
        )

    __str__ = __repr__

    @property
    def uses_chain(self) -> bool:
        """No static keys: boto3's default credential chain supplies them (and refreshes them)."""
        return not self.access_key and not self.secret_key

    @property
    def endpoint_display(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"

    def url(self, *parts: str) -> str:
        """s3://bucket/prefix/parts..., for messages and docs."""
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))
        return f"s3://{self.bucket}/{key}"

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def client_env(self) -> dict[str, str]:
        """Environment for a child process (aws cli, push_to_minio.sh). Goes in env=, never in argv."""
        env = {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # boto3 >= 1.36 sends CRC checksums by default, which several S3-compatible servers
            # reject (FACTS.md); integrity is proven by our own sha256 instead.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        if not self.uses_chain:
            # With the chain, the child inherits AWS_PROFILE & co. and resolves them itself.
            env["AWS_ACCESS_KEY_ID"] = self.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        if self.endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def env_file_text(self) -> str:
        """Shell-sourceable settings (secrets included): written only to 0600 files on request."""
        lines = [f"export {k}='{v}'" for k, v in sorted(self.client_env().items())]
        lines.append(f"export WHISPER_RELEASE_BUCKET='{self.bucket}'")
        lines.append(f"export WHISPER_RELEASE_PREFIX='{self.prefix}'")
        return "\n".join(lines) + "\n"

    def with_target(self, bucket: str | None = None, prefix: str | None = None) -> S3Config:
        cfg = replace(self, bucket=bucket or self.bucket, prefix=self.prefix if prefix is None else prefix)
        return validate(cfg)


# ---- validation ---------------------------------------------------------------------------


def normalize_endpoint(value: str, *, secure_default: bool = True, where: str = "the endpoint") -> str:
    """http(s)://host[:port] with no path; a bare host[:port] (MinIO style) gets a scheme."""
    raw = value.strip()
    shown = redact_url(raw)  # a pasted KEY:SECRET@host must not come back in the message
    if "://" not in raw:
        raw = ("https://" if secure_default else "http://") + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{where} {shown!r} is not a URL: expected http(s)://host[:port], e.g. http://127.0.0.1:9000."
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where} {shown!r} is not an http(s) URL: expected http(s)://host[:port], "
            "e.g. http://127.0.0.1:9000."
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"{where} carries credentials inside the URL: remove them and set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{where} {shown!r} has a path or query: expected only http(s)://host[:port]; put the "
            "bucket in MINIO_BUCKET/WHISPER_RELEASE_BUCKET and the folder in the prefix."
        )
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def check_bucket(bucket: str, where: str = "bucket") -> None:
    """S3 bucket naming rules (the strict, DNS-compatible set every S3 server accepts)."""
    problem = None
    if not 3 <= len(bucket) <= 63:
        problem = f"is {len(bucket)} characters long (must be 3 to 63)"
    elif not _BUCKET_RE.match(bucket):
        problem = ("may use only lowercase letters, digits, dots and hyphens, starting and ending with a "
                   "letter or digit")
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        problem = "must not contain '..', '.-' or '-.'"
    elif bucket.startswith("xn--") or bucket.endswith("-s3alias"):
        problem = "must not start with 'xn--' or end with '-s3alias'"
    else:
        try:
            ipaddress.IPv4Address(bucket)
            problem = "must not look like an IP address"
        except ValueError:
            pass
    if problem:
        raise ConfigError(f"The {where} name {bucket!r} {problem}; choose a valid S3 bucket name.")


def normalize_prefix(prefix: str, where: str = "prefix") -> str:
    p = prefix.strip().strip("/")
    if not p:
        return ""
    for seg in p.split("/"):
        if seg in ("", ".", "..") or not _PREFIX_SEGMENT_RE.match(seg):
            raise ConfigError(
                f"The {where} {prefix!r} has an invalid segment {seg!r}: use '/'-separated names of "
                "letters, digits and ._+=@- (no empty, '.' or '..' segments)."
            )
    return p


def validate(cfg: S3Config, origins: Mapping[str, str] | None = None) -> S3Config:
    """Return a normalized copy or raise ConfigError naming the one thing to fix."""
    origins = origins or {}

    def src(key: str) -> str:
        return origins.get(key, cfg.source)

    endpoint = None
    if cfg.endpoint:
        endpoint = normalize_endpoint(cfg.endpoint, where=f"The endpoint from {src('endpoint')}")
    check_bucket(cfg.bucket, where=f"bucket (from {src('bucket')})")
    prefix = normalize_prefix(cfg.prefix, where=f"prefix (from {src('prefix')})")
    if not _REGION_RE.match(cfg.region):
        raise ConfigError(
            f"The region {cfg.region!r} (from {src('region')}) is not a region name: expected e.g. us-east-1."
        )
    if bool(cfg.access_key) != bool(cfg.secret_key):
        missing = "AWS_ACCESS_KEY_ID (or MINIO_ACCESS_KEY)" if not cfg.access_key else (
            "AWS_SECRET_ACCESS_KEY (or MINIO_SECRET_KEY)"
        )
        raise ConfigError(
            f"The publishing credentials from {cfg.source} are incomplete: {missing} is not set; "
            "set both the access key and the secret key."
        )
    for key, name in (("access_key", "access key"), ("secret_key", "secret key")):
        value = getattr(cfg, key)
        if value and any(c.isspace() for c in value) or not value.isprintable():
            raise ConfigError(
                f"The {name} from {src(key)} contains whitespace or control characters; "
                "check for a stray newline or quote."
            )
    return replace(cfg, endpoint=endpoint, prefix=prefix)


# ---- loading ------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"The S3 config file {path} does not exist; create it or unset {CONFIG_FILE_VAR}."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"The S3 config file {path} is not valid TOML ({e}); fix its syntax.") from None
    table = data.get("s3", data)
    if not isinstance(table, dict):
        raise ConfigError(f"The S3 config file {path} has no [s3] table; see docs/publish.md for its format.")
    unknown = sorted(set(table) - set(FILE_KEYS) - {"secure"})
    if unknown:
        raise ConfigError(
            f"The S3 config file {path} has unknown key(s) {', '.join(unknown)}: expected only "
            f"{', '.join(FILE_KEYS)}."
        )
    return {k: str(v) if k != "secure" else v for k, v in table.items()}


def load_config(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    defaults: Mapping[str, str] | None = None,
    defaults_origin: str = "the caller's defaults",
) -> S3Config | None:
    """The configured target, or None when nothing names a store (the caller may start the embedded one).

    "Nothing names a store" means: no endpoint and no credentials anywhere. Credentials without an
    endpoint mean AWS S3 itself.
    """
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    origin: dict[str, str] = {}

    file_path = config_file or env.get(CONFIG_FILE_VAR)
    file_values: dict[str, Any] = _read_file(Path(file_path)) if file_path else {}

    for key in FILE_KEYS:
        for var in ENV_NAMES[key]:
            if env.get(var):
                values[key], origin[key] = env[var], f"${var}"
                break
        else:
            if file_values.get(key):
                values[key], origin[key] = str(file_values[key]), f"config file {file_path}"
    if endpoint:
        values["endpoint"], origin["endpoint"] = endpoint, "--endpoint"
    chain_vars = [v for v in CHAIN_VARS if env.get(v)]
    if not any(k in values for k in ("endpoint", "access_key", "secret_key")) and not chain_vars:
        return None
    if chain_vars:
        origin.setdefault("chain", f"${chain_vars[0]}")

    defaults = dict(defaults or {})
    if bucket:
        values["bucket"], origin["bucket"] = bucket, "--bucket"
    if prefix is not None:
        values["prefix"], origin["prefix"] = prefix, "--prefix"
    if not values.get("bucket") and not defaults.get("bucket"):
        raise ConfigError(
            "No bucket is configured for the S3 store: set WHISPER_RELEASE_BUCKET (or MINIO_BUCKET, or "
            "`bucket` in the S3 config file)."
        )
    values.setdefault("bucket", defaults.get("bucket", ""))
    values.setdefault("prefix", defaults.get("prefix", ""))

    # MINIO_ENDPOINT is conventionally host:port with MINIO_SECURE saying whether TLS is on.
    if env.get("MINIO_SECURE"):
        secure: bool = settings.get("MINIO_SECURE", env)
    else:
        file_secure = file_values.get("secure", True)
        try:
            secure = file_secure if isinstance(file_secure, bool) else bool(
                settings.KNOBS["MINIO_SECURE"].parse(str(file_secure)))
        except ValueError:
            raise ConfigError(
                f"The S3 config file {file_path} has secure = {file_secure!r}: expected true or false."
            ) from None
    if "endpoint" in values:
        values["endpoint"] = normalize_endpoint(
            values["endpoint"], secure_default=secure, where=f"The endpoint from {origin['endpoint']}"
        )
    kinds = []
    if any(o.startswith("$") for o in origin.values()):
        kinds.append("the environment")
    if file_path and any(o.startswith("config file") for o in origin.values()):
        kinds.append(f"config file {file_path}")
    if any(o.startswith("--") for o in origin.values()):
        kinds.append("the command line")
    for key in ("bucket", "prefix"):
        origin.setdefault(key, defaults_origin)
    cfg = validate(
        S3Config(
            endpoint=values.get("endpoint"),
            bucket=values["bucket"],
            prefix=values["prefix"],
            region=values.get("region", DEFAULT_REGION),
            access_key=values.get("access_key", ""),
            secret_key=values.get("secret_key", ""),
            session_token=values.get("session_token"),
            source=" and ".join(kinds),
        ),
        origin,
    )
    return resolve_chain(cfg, env) if cfg.uses_chain else cfg


def resolve_chain(cfg: S3Config, env: Mapping[str, str] | None = None) -> S3Config:
    """`cfg` (no static keys) after proving boto3's default chain yields credentials; ConfigError if
    it finds none. The keys are not copied into `cfg`: clients resolve (and refresh) them again."""
    import boto3
    import botocore.exceptions

    env = os.environ if env is None else env
    profile = env.get("AWS_PROFILE") or None
    try:
        # Session(profile_name=None) reads AWS_PROFILE from os.environ itself; passing it keeps an
        # explicit `env` (tests, callers) authoritative.
        creds = boto3.session.Session(profile_name=profile).get_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"AWS_PROFILE={profile!r} names no profile in the AWS config or credentials files "
            "(~/.aws/config, ~/.aws/credentials, or AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE); fix the "
            "name or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        ) from None
    except botocore.exceptions.BotoCoreError as e:
        raise ConfigError(
            f"boto3's default credential chain failed for the store at {cfg.endpoint_display} "
            f"({type(e).__name__}: {e}); fix that source or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        ) from None
    if creds is None:
        raise ConfigError(
            f"No credentials for the store at {cfg.endpoint_display}: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY are not set and boto3's default chain (AWS_PROFILE, ~/.aws files, SSO, "
            "container or instance role) found none; set the keys or a profile."
        )
    method = getattr(creds, "method", "") or "default chain"
    return replace(cfg, source=f"{cfg.source} (credentials: boto3 {method})".strip(), access_key="",
                   secret_key="")
