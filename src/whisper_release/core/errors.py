"""Typed errors. Only entry points turn one into an exit code (`exit_code`).

Every message is one sentence: what failed, where, expected vs got, and what to do.
"""

from __future__ import annotations

from whisper_release.core.redact import redact_text


class ReleaseError(Exception):
    """Base class: a failure the user can act on. Never carries secrets: a URL's userinfo is
    redacted here, whatever the raiser passed (core/redact.py)."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class ConfigError(ReleaseError):
    """release.toml, a profile, a model name or a setting is wrong."""

    exit_code = 2


class FetchError(ReleaseError):
    """A download failed after its retries (network, HTTP status)."""

    exit_code = 3


class VerificationError(ReleaseError):
    """An input or artifact does not match its pin (hash, size, tree, hparams, tensors)."""

    exit_code = 4


class ConversionError(ReleaseError):
    """A CTranslate2 model cannot be converted (missing or mis-shaped tensor, bad format)."""

    exit_code = 5


class ToolError(ReleaseError):
    """An external tool is missing or failed (docker, debootstrap, objdump, weed, mc, aws)."""

    exit_code = 6


class BuildError(ReleaseError):
    """The docker build or extraction failed."""

    exit_code = 7


class PublishError(ReleaseError):
    """Upload to the object store failed or was refused."""

    exit_code = 8


class CpuError(ReleaseError):
    """This CPU lacks an instruction-set extension the artifact needs."""

    exit_code = 9
