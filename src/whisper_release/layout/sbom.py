"""Licence texts and the CycloneDX SBOM of one whisper_<model>_xeon directory; `sbom_summary` reads it.

Standard library only at import, like artifacts.py and readme.py: the organizer stage runs this file
with the base image's python3 (build/docker.py copies it into the build context). Only `render_sbom`
needs cyclonedx-python-lib (with packageurl-python): the organizer puts the pinned, verified wheels on
PYTHONPATH, the host has them installed. Everything else, the README's licence table and
`whisper-release info` included, works from plain data (`Part`) or plain JSON.

Determinism: components are written sorted by the library, the timestamp is SOURCE_DATE_EPOCH and
the serial number is a UUID derived from the SBOM's content, so the same inputs give the same bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import tarfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SBOM = "sbom.cdx.json"
MEDIA_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.6"
LICENSE_DIR = "licenses"
# The licence texts every artifact ships (paths inside whisper_<model>_xeon/).
WHISPER_CPP_TEXT = f"{LICENSE_DIR}/whisper.cpp.LICENSE"  # the tree's LICENSE, which covers ggml too
WEIGHTS_TEXT = f"{LICENSE_DIR}/whisper-weights.LICENSE"  # OpenAI's MIT licence of Whisper
LIBGOMP_TEXT = f"{LICENSE_DIR}/libgomp1.copyright"  # Debian's copyright file, GCC exception included
GPL3_TEXT = f"{LICENSE_DIR}/GPL-3"  # Debian's common-licenses copy, which libgomp1's file points to
LICENSE_TEXTS = (GPL3_TEXT, LIBGOMP_TEXT, WEIGHTS_TEXT, WHISPER_CPP_TEXT)

# Property names of this project inside the SBOM (CycloneDX allows any; prefixed to stay apart).
PROP_TEXT_OF = "whisper-release:license-text-of"  # on a licence text: the SPDX ids whose text it is
PROP_TEXTS = "whisper-release:license-texts"  # on a licensed component: where its texts are
PROP_ROLE = "whisper-release:role"  # file roles: library, model, readme, license-text

Purl = tuple[
    str, str, str, str, tuple[tuple[str, str], ...], str
]  # type, ns, name, version, qualifiers, subpath


class SbomError(ValueError):
    """The inputs of the SBOM (licence sources, dpkg data, build.json) are not what it needs."""


@dataclass(frozen=True)
class Part:
    """One CycloneDX component as plain data: a shipped file or an input it was made from."""

    ref: str
    name: str
    type: str  # a CycloneDX component type: file, library, machine-learning-model, application
    version: str = ""
    purl: Purl | None = None
    sha256: str = ""
    sha1: str = ""
    license: str = ""  # SPDX expression
    texts: tuple[str, ...] = ()  # licence texts in the artifact that cover `license`
    text_of: tuple[str, ...] = ()  # for a licence text: the SPDX ids it holds the text of
    role: str = ""
    scope: str = ""  # "excluded": used to build, not shipped (the compilers)
    depends_on: tuple[str, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()
    description: str = ""
    url: str = ""  # where the input came from (a VCS or download URL)

    def all_properties(self) -> list[tuple[str, str]]:
        props = list(self.properties)
        if self.texts:
            props.append((PROP_TEXTS, " ".join(self.texts)))
        if self.text_of:
            props.append((PROP_TEXT_OF, " ".join(self.text_of)))
        if self.role:
            props.append((PROP_ROLE, self.role))
        return sorted(props)


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    arch: str
    source: str = ""


@dataclass(frozen=True)
class BuildFacts:
    """What only the builder image knows: installed Debian packages, the distro, ggml's version."""

    packages: Mapping[str, DebianPackage] = field(default_factory=dict)
    distro: str = ""  # e.g. debian-12
    ggml_version: str = ""


# ---- facts from the builder image ----------------------------------------------------------------
def parse_dpkg(text: str) -> dict[str, DebianPackage]:
    """`dpkg-query -W -f '${Package}\\t${Version}\\t${Architecture}\\t${source:Package}\\n'` output."""
    out: dict[str, DebianPackage] = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[0]:
            out[cols[0]] = DebianPackage(cols[0], cols[1], cols[2], cols[3] if len(cols) > 3 else "")
    return out


def parse_os_release(text: str) -> str:
    """/etc/os-release -> the purl `distro` qualifier, e.g. debian-12."""
    values = dict(
        (k, v.strip().strip('"')) for k, _, v in (ln.partition("=") for ln in text.splitlines()) if v
    )
    return f"{values.get('ID', 'linux')}-{values.get('VERSION_ID', '')}".rstrip("-")


def ggml_version(source_dir: Path) -> str:
    """The ggml version vendored in the whisper.cpp tree (ggml/CMakeLists.txt GGML_VERSION_*)."""
    text = (source_dir / "ggml" / "CMakeLists.txt").read_text(encoding="utf-8")
    parts = [re.search(rf"set\(GGML_VERSION_{k} (\d+)\)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise SbomError(
            f"{source_dir / 'ggml' / 'CMakeLists.txt'} sets no GGML_VERSION_MAJOR/MINOR/PATCH; "
            "the source tree is not the pinned whisper.cpp."
        )
    return ".".join(m.group(1) for m in parts if m)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- licence texts -------------------------------------------------------------------------------
def license_text_sources(
    *, source_dir: Path, share_dir: Path, assets_sdist: Path, assets: Mapping[str, Any]
) -> dict[str, bytes]:
    """Artifact path -> bytes of every licence text: from the verified source tree, the builder
    image's /usr/share (Debian's copyright file and GPL-3 text) and the pinned openai-whisper sdist."""
    wanted = {
        WHISPER_CPP_TEXT: source_dir / "LICENSE",
        LIBGOMP_TEXT: share_dir / "doc" / "libgomp1" / "copyright",
        GPL3_TEXT: share_dir / "common-licenses" / "GPL-3",
    }
    out: dict[str, bytes] = {}
    for rel, src in wanted.items():
        if not src.is_file():
            raise SbomError(
                f"licence text {src} (for {rel}) is missing; the builder image or source tree lacks it."
            )
        out[rel] = src.read_bytes()
    if not assets_sdist.is_file() or _sha256_file(assets_sdist) != assets["sha256"]:
        raise SbomError(
            f"{assets_sdist} is missing or its sha256 is not the pinned {assets['sha256']}; "
            "rebuild the context with `invoke build`."
        )
    member = str(assets["license_file"])
    with tarfile.open(assets_sdist, "r:*") as tf:
        try:
            fh = tf.extractfile(member)
        except KeyError:
            fh = None
        if fh is None:
            raise SbomError(
                f"{assets_sdist.name} has no file {member!r}; fix [assets] license_file in release.toml."
            )
        out[WEIGHTS_TEXT] = fh.read()
    return out


def spdx_ids(expression: str) -> tuple[list[str], list[str]]:
    """(licence ids, exception ids) named in an SPDX expression."""
    tokens = [t for t in re.split(r"[\s()]+", expression) if t]
    ids: list[str] = []
    exceptions: list[str] = []
    after_with = False
    for t in tokens:
        if t.upper() in ("AND", "OR"):
            after_with = False
        elif t.upper() == "WITH":
            after_with = True
        else:
            (exceptions if after_with else ids).append(t)
            after_with = False
    return ids, exceptions


# ---- the components --------------------------------------------------------------------------------
def _pypi(name: str, version: str) -> Purl:
    return ("pypi", "", name.lower().replace("_", "-"), version, (), "")


def _file_ref(rel: str) -> str:
    return f"file:{rel}"


def artifact_parts(
    d: Path, *, model: str, model_files: Sequence[str], build: Mapping[str, Any], facts: BuildFacts
) -> tuple[Part, list[Part]]:
    """(the artifact itself, every component): one per file now in `d` (the SBOM and SHA256SUMS
    excepted: they describe the others) and one per input those files were made from."""
    sb = build["sbom"]
    release = str(build["release_version"])
    src = build["source"]
    inputs = build.get("inputs", {})
    src_in = inputs.get("source", {})
    repo = str(sb["source_repository"])
    host, _, path = repo.partition("/")
    owner, _, repo_name = path.partition("/")
    src_license = str(sb["source_license"])
    deb = sb["debian"]
    parts: list[Part] = []

    # inputs: whisper.cpp and the ggml it carries, the provider package it came in
    whisper_ref = "input:whisper.cpp"
    provider_refs: tuple[str, ...] = ()
    if src_in.get("package"):
        pkg_ref = f"input:pypi:{src_in['package']}"
        provider_refs = (pkg_ref,)
        parts.append(
            Part(
                pkg_ref,
                str(src_in["package"]),
                "library",
                str(src_in["version"]),
                _pypi(str(src_in["package"]), str(src_in["version"])),
                sha256=str(src_in.get("sha256", "")),
                license=src_license,
                texts=(WHISPER_CPP_TEXT,),
                description=f"sdist {src_in.get('filename', '')}: the whisper.cpp tree was taken from it",
            )
        )
    parts.append(
        Part(
            whisper_ref,
            "whisper.cpp",
            "library",
            str(src["version"]),
            (host.split(".")[0], owner, repo_name, str(src["commit"]), (), ""),
            license=src_license,
            texts=(WHISPER_CPP_TEXT,),
            depends_on=provider_refs,
            properties=(("git:commit", str(src["commit"])), ("git:tree", str(src["tree"]))),
            url=f"https://{repo}",
        )
    )
    ggml_ref = "input:ggml"
    parts.append(
        Part(
            ggml_ref,
            "ggml",
            "library",
            facts.ggml_version,
            ("generic", "", "ggml", facts.ggml_version, (), ""),
            license=src_license,
            texts=(WHISPER_CPP_TEXT,),
            depends_on=(whisper_ref,),
            description=f"vendored in whisper.cpp {src['version']} (commit {src['commit']})",
        )
    )

    # inputs: Debian packages of the builder image
    for name in sorted(deb):
        pkg = facts.packages.get(name)
        if pkg is None:
            raise SbomError(
                f"Debian package {name} ([sbom.debian] in release.toml) is not installed in the builder "
                "image; fix the pin or the base image's package list."
            )
        quals = tuple(sorted({"arch": pkg.arch, "distro": facts.distro}.items()))
        parts.append(
            Part(
                f"input:deb:{name}",
                name,
                "library" if name.startswith("lib") else "application",
                pkg.version,
                ("deb", "debian", name, pkg.version, quals, ""),
                license=str(deb[name]),
                texts=(LIBGOMP_TEXT, GPL3_TEXT),
                scope="" if name.startswith("lib") else "excluded",
                properties=(("debian:source", pkg.source),) if pkg.source else (),
            )
        )

    # inputs: the model and where its weights came from
    m_in = inputs.get("models", {}).get(model, {})
    m_build = build["models"][model]
    m_license = str(sb["model_licenses"][model])
    model_ref = f"input:model:{model}"
    m_deps: list[str] = []
    for p in m_in.get("packages", []):
        ref = f"input:pypi:{p['name']}"
        m_deps.append(ref)
        parts.append(
            Part(
                ref,
                str(p["name"]),
                "library",
                str(p["version"]),
                _pypi(str(p["name"]), str(p["version"])),
                sha256=str(p["sha256"]),
                license=m_license,
                texts=(WEIGHTS_TEXT,),
                description=f"CTranslate2 weights of Whisper {model}",
            )
        )
    assets = sb["assets"]
    # Always an input: the weights' licence text comes from it; the conversion also uses its assets.
    converted = m_in.get("provider", m_build.get("provider")) == "ct2"
    assets_ref = f"input:pypi:{assets['package']}"
    if converted:
        m_deps.append(assets_ref)
    parts.append(
        Part(
            assets_ref,
            str(assets["package"]),
            "library",
            str(assets["version"]),
            _pypi(str(assets["package"]), str(assets["version"])),
            sha256=str(assets["sha256"]),
            license=str(assets["license"]),
            texts=(WEIGHTS_TEXT,),
            description=(
                "mel filters and tokenizer for the conversion, and the weights' licence text"
                if converted
                else "the weights' licence text"
            ),
        )
    )
    official = (
        (
            "generic",
            "",
            Path(str(m_in["url"])).name,
            "",
            (("checksum", f"sha1:{m_in['sha1']}"), ("download_url", str(m_in["url"]))),
            "",
        )
        if m_in.get("url") and m_in.get("sha1")
        else None
    )
    parts.append(
        Part(
            model_ref,
            f"whisper-{model}",
            "machine-learning-model",
            "ggml-f16",
            official or ("generic", "whisper-release", f"ggml-{model}.bin", "f16", (), ""),
            sha256=str(m_build["sha256"]),
            sha1=str(m_in.get("sha1") or ""),
            license=m_license,
            texts=(WEIGHTS_TEXT,),
            depends_on=tuple(sorted(m_deps)),
            description="the ggml f16 model the shipped files were quantized from",
            url=str(m_in.get("url") or ""),
        )
    )

    # the shipped files
    input_of = {
        "libwhisper.so": (whisper_ref, src_license, (WHISPER_CPP_TEXT,)),
        "libgomp.so.1": ("input:deb:libgomp1", str(deb.get("libgomp1", "")), (LIBGOMP_TEXT, GPL3_TEXT)),
    }
    dir_name = d.name
    for rel in sorted(_files(d)):
        if rel in (SBOM, "SHA256SUMS"):
            continue
        purl: Purl = ("generic", "whisper-release", dir_name, release, (), rel)
        digest = _sha256_file(d / rel)
        # What kind of file it is decides its licence, texts, role and the input it was made from.
        kind: dict[str, Any]
        if rel in input_of:
            dep, lic, texts = input_of[rel]
            kind = {"license": lic, "texts": texts, "role": "library", "depends_on": (dep,)}
        elif rel.startswith("libggml"):
            kind = {
                "license": src_license,
                "texts": (WHISPER_CPP_TEXT,),
                "role": "library",
                "depends_on": (ggml_ref,),
            }
        elif rel in model_files:
            kind = {
                "license": m_license,
                "texts": (WEIGHTS_TEXT,),
                "role": "model",
                "depends_on": (model_ref,),
            }
        elif rel.startswith(LICENSE_DIR + "/"):
            kind = {"role": "license-text", "text_of": _text_of(rel, src_license, m_license)}
        else:
            kind = {"role": "readme" if rel == "README.md" else "other"}
        parts.append(Part(_file_ref(rel), rel, "file", release, purl, digest, **kind))
    root = Part(
        f"artifact:{dir_name}",
        dir_name,
        "application",
        release,
        ("generic", "whisper-release", dir_name, release, (), ""),
        description=f"whisper.cpp {src['version']} with the Whisper {model} model for x86-64 (AVX2+FMA)",
    )
    return root, parts


def _text_of(rel: str, src_license: str, model_license: str) -> tuple[str, ...]:
    ids: dict[str, list[str]] = {
        WHISPER_CPP_TEXT: spdx_ids(src_license)[0],
        WEIGHTS_TEXT: spdx_ids(model_license)[0],
        LIBGOMP_TEXT: ["GCC-exception-3.1"],
        GPL3_TEXT: ["GPL-3.0-or-later"],
    }
    return tuple(sorted(ids.get(rel, [])))


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir())


def tool_parts(tools: Iterable[Mapping[str, Any]]) -> list[Part]:
    """The SBOM's writers (cyclonedx-python-lib and its dependencies): metadata.tools, not shipped."""
    return [
        Part(
            f"tool:pypi:{t['name']}",
            str(t["name"]),
            "library",
            str(t["version"]),
            _pypi(str(t["name"]), str(t["version"])),
            sha256=str(t["sha256"]),
            description=f"wheel {t.get('filename', '')}",
        )
        for t in sorted(tools, key=lambda t: str(t["name"]))
    ]


# ---- the README's licence table --------------------------------------------------------------------
def licence_table(parts: Sequence[Part]) -> str:
    """Markdown: each input a shipped file was made from directly, its licence and where its text is."""
    by_ref = {p.ref: p for p in parts}
    users: dict[str, list[str]] = {}
    for p in parts:
        if p.type == "file":
            for dep in p.depends_on:
                users.setdefault(dep, []).append(p.name)
    rows = ["| component | version | licence | shipped as | licence text |", "|---|---|---|---|---|"]
    for ref in sorted(users, key=lambda r: by_ref[r].name.lower()):
        p = by_ref[ref]
        files = ", ".join(f"`{n}`" for n in sorted(users[ref]))
        texts = ", ".join(f"`{t}`" for t in p.texts)
        rows.append(f"| {p.name} | {p.version} | {p.license} | {files} | {texts} |")
    return "\n".join(rows)


# ---- writing (needs cyclonedx-python-lib) -----------------------------------------------------------
def serial_number(root: Part, parts: Sequence[Part], tools: Sequence[Part], epoch: int) -> uuid.UUID:
    """A UUID derived from everything the SBOM says: the same inputs give the same serial number."""
    data = json.dumps(
        [epoch, asdict(root), [asdict(p) for p in parts], [asdict(t) for t in tools]], sort_keys=True
    ).encode()
    return uuid.uuid5(uuid.NAMESPACE_URL, f"urn:whisper-release:sbom:{sha256_bytes(data)}")


def render_sbom(root: Part, parts: Sequence[Part], tools: Sequence[Part], epoch: int) -> str:
    """CycloneDX 1.6 JSON written by cyclonedx-python-lib; deterministic for the same arguments."""
    # cyclonedx-python-lib: unpacked from pinned wheels in the organizer stage, in the verify extra on
    # a host; the rest of this module (sbom_summary, what the consumer uses) is standard library only.
    from cyclonedx.model import (
        ExternalReference,
        ExternalReferenceType,
        HashAlgorithm,
        HashType,
        Property,
        XsUri,
    )
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentScope, ComponentType
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def component(p: Part) -> Component:
        hashes = [HashType(alg=HashAlgorithm.SHA_256, content=p.sha256)] if p.sha256 else []
        if p.sha1:
            hashes.append(HashType(alg=HashAlgorithm.SHA_1, content=p.sha1))
        purl = None
        if p.purl:
            t, ns, name, version, quals, sub = p.purl
            purl = PackageURL(t, ns or None, name, version or None, dict(quals) or None, sub or None)
        refs = []
        if p.url:
            kind = (
                ExternalReferenceType.VCS
                if p.ref == "input:whisper.cpp"
                else ExternalReferenceType.DISTRIBUTION
            )
            refs.append(ExternalReference(type=kind, url=XsUri(p.url)))
        return Component(
            name=p.name,
            type=ComponentType(p.type),
            version=p.version or None,
            bom_ref=p.ref,
            purl=purl,
            hashes=hashes,
            licenses=[LicenseExpression(p.license)] if p.license else [],
            scope=ComponentScope(p.scope) if p.scope else None,
            properties=[Property(name=k, value=v) for k, v in p.all_properties()],
            description=p.description or None,
            external_references=refs,
        )

    bom = Bom(serial_number=serial_number(root, parts, tools, epoch))
    bom.metadata.timestamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    bom.metadata.component = component(root)
    for t in tools:
        bom.metadata.tools.components.add(component(t))
    by_ref = {p.ref: component(p) for p in parts}
    for c in by_ref.values():
        bom.components.add(c)
    bom.register_dependency(bom.metadata.component, [by_ref[p.ref] for p in parts if p.type == "file"])
    for p in parts:
        if p.depends_on:
            bom.register_dependency(by_ref[p.ref], [by_ref[r] for r in p.depends_on])
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


# ---- reading (standard library: the consumer's `info`) ----------------------------------------------
def load_sbom(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SbomError(f"{path} is missing: this artifact has no SBOM; pull or build it again.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SbomError(f"{path} is not valid JSON ({e}); pull or build the artifact again.") from None
    if not isinstance(data, dict) or data.get("bomFormat") != "CycloneDX":
        raise SbomError(f"{path} is not a CycloneDX SBOM (no bomFormat CycloneDX); pull or build it again.")
    return data


def properties(component: Mapping[str, Any]) -> dict[str, str]:
    return {str(p.get("name")): str(p.get("value", "")) for p in component.get("properties", []) or []}


def license_of(component: Mapping[str, Any]) -> str:
    out = []
    for entry in component.get("licenses", []) or []:
        if "expression" in entry:
            out.append(str(entry["expression"]))
        elif isinstance(entry.get("license"), Mapping):
            lic = entry["license"]
            out.append(str(lic.get("id") or lic.get("name") or ""))
    return " AND ".join(x for x in out if x)


def sha256_of(component: Mapping[str, Any]) -> str:
    for h in component.get("hashes", []) or []:
        if h.get("alg") == "SHA-256":
            return str(h.get("content", ""))
    return ""


def sbom_summary(directory: str | Path) -> str:
    """What `whisper-release info DIR` prints: the SBOM's components and licences, as text."""
    d = Path(directory)
    data = load_sbom(d / SBOM)
    comps = list(data.get("components", []) or [])
    root = (data.get("metadata") or {}).get("component") or {}
    lines = [
        f"{d / SBOM}: CycloneDX {data.get('specVersion', '?')}, {len(comps)} components, "
        f"serial {data.get('serialNumber', '?')}",
        f"artifact: {root.get('name', d.name)} {root.get('version', '')}".rstrip(),
        "",
    ]
    files = [c for c in comps if c.get("type") == "file"]
    inputs = [c for c in comps if c.get("type") != "file"]

    def table(rows: list[tuple[str, ...]]) -> list[str]:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]

    lines.append(f"shipped files ({len(files)}):")
    rows: list[tuple[str, ...]] = [("file", "sha256", "licence")]
    rows += [
        (str(c.get("name")), sha256_of(c)[:16], license_of(c) or "-")
        for c in sorted(files, key=lambda c: str(c.get("name")))
    ]
    lines += table(rows)
    lines += ["", f"inputs ({len(inputs)}):"]
    rows = [("component", "version", "licence", "purl")]
    rows += [
        (str(c.get("name")), str(c.get("version", "")), license_of(c) or "-", str(c.get("purl", "")))
        for c in sorted(inputs, key=lambda c: str(c.get("name")).lower())
    ]
    lines += table(rows)
    texts: dict[str, list[str]] = {}
    for c in files:
        for lic in properties(c).get(PROP_TEXT_OF, "").split():
            texts.setdefault(lic, []).append(str(c.get("name")))
    named = sorted({x for c in comps for part in spdx_ids(license_of(c)) for x in part})
    lines += ["", "licences:"]
    for lic in named:
        where = ", ".join(sorted(texts.get(lic, []))) or "NO TEXT IN THE ARTIFACT"
        lines.append(f"  {lic}: {where}")
    return "\n".join(lines) + "\n"
