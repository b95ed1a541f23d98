"""The SBOM of an artifact directory against its files: every file listed with its true sha256, every
licence named has its text in the directory, and the document validates against the CycloneDX schema
with cyclonedx-python-lib's own validator.

Returns Findings like integrity.py, so the suite reports everything wrong at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from whisper_release.layout.artifacts import SUMS, relative_files, sha256_file
from whisper_release.layout.sbom import (
    PROP_TEXT_OF,
    PROP_TEXTS,
    SBOM,
    license_of,
    properties,
    sha256_of,
    spdx_ids,
)
from whisper_release.verify.integrity import Finding


def validate_schema(text: str, spec_version: str) -> str | None:
    """None when `text` validates against the CycloneDX JSON schema of `spec_version`, else why not."""
    # the verify extra's cyclonedx-python-lib: only the SBOM check needs it
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        version = SchemaVersion.from_version(spec_version)
    except ValueError:
        return f"specVersion {spec_version!r} is not a CycloneDX version this library knows"
    error = JsonStrictValidator(version).validate_str(text)
    return None if error is None else str(error)[:300]


def check_sbom(artifact_dir: Path) -> list[Finding]:
    """Every file of the directory (but the SBOM and SHA256SUMS) is a file component with the same
    sha256 and vice versa; every licence id or exception named has a shipped text; schema-valid."""
    path = artifact_dir / SBOM
    try:
        text = path.read_text(encoding="utf-8")
        data: dict[str, Any] = json.loads(text)
    except FileNotFoundError:
        return [Finding(str(path), "SBOM", "a CycloneDX SBOM in the artifact directory", "none")]
    except (ValueError, UnicodeDecodeError) as e:
        return [Finding(str(path), "SBOM", "valid JSON", f"a parse error ({e})")]
    findings: list[Finding] = []
    error = validate_schema(text, str(data.get("specVersion", "")))
    if error:
        findings.append(Finding(str(path), "CycloneDX schema validation", "valid", error))
    components = [c for c in data.get("components", []) or [] if isinstance(c, dict)]
    listed = {str(c.get("name")): c for c in components if c.get("type") == "file"}
    present = {n for n in relative_files(artifact_dir) if n not in (SBOM, SUMS)}
    for name in sorted(listed.keys() - present):
        findings.append(Finding(str(artifact_dir / name), f"file listed in {SBOM}", "present", "missing"))
    for name in sorted(present - listed.keys()):
        findings.append(
            Finding(str(path), f"component for {name}", "a file component per shipped file", "none")
        )
    for name in sorted(listed.keys() & present):
        got, want = sha256_file(artifact_dir / name), sha256_of(listed[name])
        if got != want:
            findings.append(
                Finding(str(artifact_dir / name), "sha256", f"{want or 'a SHA-256 hash'} ({SBOM})", got)
            )

    # Which shipped file holds the text of which licence id (the SBOM says so on each text's component).
    texts: dict[str, list[str]] = {}
    for name, c in listed.items():
        for lic in properties(c).get(PROP_TEXT_OF, "").split():
            texts.setdefault(lic, []).append(name)
    root = (data.get("metadata") or {}).get("component") or {}
    users: dict[str, list[str]] = {}
    for c in [root, *components]:
        ids, exceptions = spdx_ids(license_of(c))
        for lic in ids + exceptions:
            users.setdefault(lic, []).append(str(c.get("name")))
        for rel in properties(c).get(PROP_TEXTS, "").split():
            if rel not in present:
                findings.append(
                    Finding(
                        str(artifact_dir / rel),
                        f"licence text of {c.get('name')} ({license_of(c)})",
                        "present",
                        "missing",
                    )
                )
    for lic, names in sorted(users.items()):
        shipped = [t for t in texts.get(lic, []) if t in present]
        if not shipped:
            where = ", ".join(sorted(texts.get(lic, []))) or f"no component with {PROP_TEXT_OF} {lic}"
            findings.append(
                Finding(
                    str(path),
                    f"licence text of {lic} (named by {', '.join(sorted(set(names)))})",
                    "a text shipped in the artifact",
                    f"none ({where} missing)" if texts.get(lic) else f"none ({where})",
                )
            )
    return findings
