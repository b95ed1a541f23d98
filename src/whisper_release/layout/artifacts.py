"""Artifact layout, SHA256SUMS and the in-toto manifest; run as a script by the organizer stage.

Standard library only and no package-relative imports at module level: the Dockerfile's organizer
stage runs this file with the base image's python3 (build.py copies it, and readme.py, into the
build context), and the host imports it as whisper_release.layout.artifacts. One implementation serves
both, so the unit tests test what the image runs.

Determinism: every list is sorted, JSON is canonical, and every file and directory gets mode
0644/0755 and the mtime SOURCE_DATE_EPOCH, so two builds of the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from whisper_release.layout import libraries as shipped
    from whisper_release.layout import readme, sbom
except ImportError:  # run as a script inside the image, libraries.py, readme.py, sbom.py beside it
    import libraries as shipped  # type: ignore[no-redef]
    import readme  # type: ignore[no-redef]
    import sbom  # type: ignore[no-redef]

# Re-exported: the layout's callers name them artifacts.X.
LayoutError = shipped.LayoutError
CPU_FLOOR = shipped.CPU_FLOOR
LIBRARIES = shipped.LIBRARIES
LINKED_CPU_LIBRARY = shipped.LINKED_CPU_LIBRARY
OPENMP_LIBRARY = shipped.OPENMP_LIBRARY
cpu_module_file = shipped.cpu_module_file
libraries = shipped.libraries
min_runtime = shipped.min_runtime
needed_versions = shipped.needed_versions

README = "README.md"
SUMS = "SHA256SUMS"
SBOM = sbom.SBOM
MANIFEST = "manifest.json"
# Machine-readable facts of one artifact directory (schema below): what pull, transcribe and the
# examples read instead of the README's prose.
METADATA = "artifact.json"
METADATA_SCHEMA = "whisper-release/artifact/v1"
# The 11 int32 hparams of a whisper.cpp ggml model header, in file order (FACTS.md).
HPARAM_ORDER = (
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
    "ftype",
)
GGML_MAGIC = 0x67676D6C
FILE_MODE = 0o644
DIR_MODE = 0o755

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:whisper-release:build:docker-multistage:v1"
BUILDER_ID = "urn:whisper-release:builder:debootstrap-docker"


def model_dir_name(model: str) -> str:
    return f"whisper_{model}_xeon"


def model_of_dir_name(name: str) -> str | None:
    """`whisper_<model>_xeon` -> `<model>`; None for any other name."""
    m = re.fullmatch(r"whisper_(.+)_xeon", name)
    return m.group(1) if m else None


def model_file_name(model: str, quantize: str) -> str:
    return f"ggml-{model}-{quantize}.bin"


def quant_types(quantize: str | Iterable[str]) -> tuple[str, ...]:
    """build.json's (or release.toml's) `quantize`: one type or a list, the primary first."""
    return (quantize,) if isinstance(quantize, str) else tuple(str(q) for q in quantize)


def model_files(model: str, quantize: str | Iterable[str]) -> tuple[str, ...]:
    """The model files of one artifact directory, the primary first."""
    return tuple(model_file_name(model, q) for q in quant_types(quantize))


def expected_files(
    model: str, quantize: str | Iterable[str], cpu_variants: Sequence[str] = (CPU_FLOOR,)
) -> tuple[str, ...]:
    """Every file of one artifact directory, as paths relative to it (licence texts in licenses/)."""
    return tuple(
        sorted(
            (
                *libraries(cpu_variants),
                *model_files(model, quantize),
                *sbom.LICENSE_TEXTS,
                METADATA,
                README,
                SBOM,
                SUMS,
            )
        )
    )


def relative_files(directory: Path) -> list[str]:
    """Every entry under `directory` that is not a directory (symlinks included, so callers can
    refuse them), as sorted posix paths relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256sums_text(directory: Path) -> str:
    """`sha256sum` format (two spaces, text mode) over every file but SHA256SUMS, sorted by relative
    path (licenses/... included, so `sha256sum -c` run inside the directory checks them too)."""
    lines = []
    for rel in relative_files(directory):
        p = directory / rel
        if rel == SUMS:
            continue
        if not p.is_file() or p.is_symlink():
            raise LayoutError(f"{p} is not a regular file; artifacts hold only real files.")
        lines.append(f"{sha256_file(p)}  {rel}\n")
    return "".join(lines)


# A name is a path relative to the artifact directory (licenses/GPL-3): no way out of it.
_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *]((?:[^/\\\s][^/\\]*/)*[^/\\\s][^/\\]*)")


def read_sha256sums(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """The one SHA256SUMS parser: name -> sha256, plus (line number, line) of every line that is not
    `<64 lowercase hex>  <file name>` (a path, or a name listed twice, counts as bad); blank lines
    are skipped."""
    out: dict[str, str] = {}
    bad: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.fullmatch(line)
        if not m or m.group(2) in out or any(part in (".", "..") for part in m.group(2).split("/")):
            bad.append((n, line))
            continue
        out[m.group(2)] = m.group(1)
    return out, bad


def parse_sha256sums(text: str, where: str = SUMS) -> dict[str, str]:
    """name -> sha256; LayoutError on the first bad line."""
    out, bad = read_sha256sums(text)
    if bad:
        n, line = bad[0]
        raise LayoutError(f"{where} line {n} is not '<sha256>  <name>' (each file once): {line!r}")
    return out


# ---- artifact.json -------------------------------------------------------------------------
def read_hparams(path: Path) -> dict[str, int]:
    """The header hparams of a whisper.cpp ggml model file (magic, then 11 x int32)."""
    with path.open("rb") as fh:
        head = fh.read(4 + 4 * len(HPARAM_ORDER))
    if len(head) < 4 + 4 * len(HPARAM_ORDER) or struct.unpack_from("<I", head)[0] != GGML_MAGIC:
        raise LayoutError(f"{path} is not a whisper.cpp ggml model file (bad magic or short header).")
    return dict(zip(HPARAM_ORDER, struct.unpack_from(f"<{len(HPARAM_ORDER)}i", head, 4), strict=True))


def metadata(d: Path, model: str, build: Mapping[str, Any], glibc: str, glibcxx: str) -> dict[str, Any]:
    """artifact.json of the laid-out directory `d`: the facts the README states, machine-readable."""
    source = build["source"]
    variants = shipped.variant_names(build)
    names = model_files(model, build["quantize"])
    types = quant_types(build["quantize"])
    files = []
    hparams: dict[str, int] = {}
    for name, qtype in zip(names, types, strict=True):
        h = read_hparams(d / name)
        files.append(
            {
                "name": name,
                "type": qtype,
                "ftype": h.pop("ftype"),
                "size": (d / name).stat().st_size,
                "sha256": sha256_file(d / name),
                "primary": name == names[0],
            }
        )
        if hparams and h != hparams:
            raise LayoutError(f"{d / name}: hparams {h} differ from {names[0]}'s {hparams}.")
        hparams = h
    return {
        "schema": METADATA_SCHEMA,
        "release_version": build["release_version"],
        "whisper_cpp": {"version": source["version"], "commit": source["commit"], "tree": source["tree"]},
        "model": {"name": model, "hparams": hparams},
        "model_files": files,
        "required_cpu_flags": [str(f) for f in build["required_cpu_flags"]],
        # The CPU modules, the floor first: each one's library and the CPU flags its code may use.
        # "linked": the single-ISA build; "runtime": one module chosen when the library is loaded.
        "cpu_dispatch": "runtime" if len(variants) > 1 else "linked",
        "cpu_variants": [
            {
                "name": str(v["name"]),
                "library": cpu_module_file(str(v["name"])) if len(variants) > 1 else LINKED_CPU_LIBRARY,
                "cpu_flags": [str(f) for f in v["cpu_flags"]],
            }
            for v in build.get("cpu_variants")
            or [{"name": CPU_FLOOR, "cpu_flags": build["required_cpu_flags"]}]
        ],
        "min_glibc": glibc,
        "min_glibcxx": glibcxx,
        "libraries": [
            {"name": lib, "role": shipped.library_role(lib, variants), "sha256": sha256_file(d / lib)}
            for lib in libraries(variants)
        ],
    }


# A finding about artifact.json: (field, wanted, got).
MetaFinding = tuple[str, str, str]


def _field_findings(meta: Any) -> list[MetaFinding]:
    """Shape of artifact.json, field by field."""
    if not isinstance(meta, dict):
        return [("(top level)", "a JSON object", type(meta).__name__)]
    out: list[MetaFinding] = []
    if meta.get("schema") != METADATA_SCHEMA:
        out.append(("schema", repr(METADATA_SCHEMA), repr(meta.get("schema"))))
    for fld, typ, want in (
        ("release_version", str, "a string"),
        ("whisper_cpp", dict, "an object"),
        ("model", dict, "an object"),
        ("model_files", list, "a non-empty list"),
        ("required_cpu_flags", list, "a list of CPU flag names"),
        ("min_glibc", str, "a version string"),
        ("min_glibcxx", str, "a string"),
        ("libraries", list, "a list"),
    ):
        if not isinstance(meta.get(fld), typ) or (fld == "model_files" and not meta.get(fld)):
            out.append((fld, want, repr(meta.get(fld))))
    if out:
        return out
    if not all(isinstance(f, str) and re.fullmatch(r"[a-z0-9_.]+", f) for f in meta["required_cpu_flags"]):
        flags = repr(meta["required_cpu_flags"])
        out.append(("required_cpu_flags", "CPU flag names as in /proc/cpuinfo", flags))
    model = meta["model"].get("name")
    for i, f in enumerate(meta["model_files"]):
        if not (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("type"), str)):
            out.append((f"model_files[{i}]", "an object with name and type", repr(f)))
            continue
        want_name = model_file_name(str(model), f["type"])
        if f["name"] != want_name:
            out.append((f"model_files[{i}].name", repr(want_name), repr(f["name"])))
    primaries = [
        f.get("name") for f in meta["model_files"] if isinstance(f, dict) and f.get("primary") is True
    ]
    if len(primaries) != 1:
        out.append(("model_files[].primary", "true on exactly one file", repr(primaries)))
    # Absent in artifacts made before runtime CPU modules: the linked floor.
    variants = meta.get("cpu_variants", [{"name": CPU_FLOOR, "library": LINKED_CPU_LIBRARY, "cpu_flags": []}])
    if (
        not isinstance(variants, list)
        or not variants
        or not all(
            isinstance(v, dict)
            and isinstance(v.get("name"), str)
            and isinstance(v.get("library"), str)
            and isinstance(v.get("cpu_flags"), list)
            for v in variants
        )
        or variants[0]["name"] != CPU_FLOOR
    ):
        out.append(
            ("cpu_variants", f"objects with name, library and cpu_flags, {CPU_FLOOR!r} first", repr(variants))
        )
        return out
    want_libs = list(libraries(shipped.variant_names(meta)))
    libs = [lib.get("name") if isinstance(lib, dict) else lib for lib in meta["libraries"]]
    if libs != want_libs:
        out.append(("libraries", f"the libraries {want_libs} in load order", repr(libs)))
    if [v["library"] for v in variants] != [lib for lib in want_libs if lib.startswith("libggml-cpu")]:
        out.append(
            ("cpu_variants[].library", "each variant's CPU library", repr([v["library"] for v in variants]))
        )
    return out


def check_metadata(d: Path) -> list[MetaFinding]:
    """Findings (empty when fine): artifact.json exists, has the v1 shape, and every size, hash and
    header fact it states is true of the directory's files."""
    where = d / METADATA
    if not where.is_file():
        return [("(file)", f"{METADATA} in every artifact directory", "missing")]
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return [("(file)", "valid JSON", f"a parse error ({e})")]
    out = _field_findings(meta)
    if out:
        return out
    for i, f in enumerate(meta["model_files"]):
        p = d / f["name"]
        if not p.is_file():
            out.append((f"model_files[{i}].name", f"a file in {d}", f"{f['name']} (absent)"))
            continue
        try:
            h = read_hparams(p)
        except LayoutError:
            out.append((f"model_files[{i}]", "a ggml model file (magic, hparams)", f"{p.name}: no header"))
            continue
        facts = {"size": p.stat().st_size, "sha256": sha256_file(p), "ftype": h.pop("ftype")}
        for key, got in facts.items():
            if f.get(key) != got:
                out.append((f"model_files[{i}].{key}", f"{got!r} ({p.name})", repr(f.get(key))))
        if h != meta["model"].get("hparams"):
            out.append(("model.hparams", f"{h} ({p.name})", repr(meta["model"].get("hparams"))))
    for i, lib in enumerate(meta["libraries"]):
        p = d / lib["name"]
        got = sha256_file(p) if p.is_file() else None
        if lib.get("sha256") != got:
            out.append((f"libraries[{i}].sha256", f"{got!r} ({p.name})", repr(lib.get("sha256"))))
    return out


def format_meta_finding(where: Path, finding: MetaFinding) -> str:
    fld, wanted, got = finding
    return f"{where}: field {fld!r}: wanted {wanted}, got {got}; pull or build the artifact again."


def load_metadata(d: Path) -> dict[str, Any]:
    """artifact.json of `d`, shape-checked; LayoutError names the file and the field."""
    where = d / METADATA
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(
            f"{d} has no {METADATA}, so it is not a whisper-release artifact directory (schema "
            f"{METADATA_SCHEMA}); pull it again with this version of whisper-release."
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LayoutError(f"{where} is not valid JSON ({e}); pull the artifact again.") from None
    findings = _field_findings(meta)
    if findings:
        raise LayoutError(format_meta_finding(where, findings[0]))
    return dict(meta)


def primary_model_file(meta: Mapping[str, Any]) -> str:
    return next(str(f["name"]) for f in meta["model_files"] if f.get("primary") is True)


# ---- layout --------------------------------------------------------------------------------
def normalise(root: Path, epoch: int) -> None:
    """Modes 0644/0755 and mtime `epoch` on everything under root (root included)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chmod(p, FILE_MODE)
            os.utime(p, (epoch, epoch))
        os.chmod(dirpath, DIR_MODE)
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -t[0].count(os.sep)):
        os.utime(dirpath, (epoch, epoch))


def lay_out_model(
    out: Path,
    model: str,
    models_dir: Path,
    lib_dir: Path,
    template: str,
    build: Mapping[str, Any],
    license_texts: Mapping[str, bytes],
    facts: sbom.BuildFacts,
) -> Path:
    """One whisper_<model>_xeon/ directory: libraries, one model file per quantization type
    (from models_dir), licence texts, artifact.json, the README rendered from it, the SBOM, then
    SHA256SUMS over all of them."""
    names = model_files(model, build["quantize"])
    for name in names:
        if not (models_dir / name).is_file():
            raise LayoutError(
                f"quantized model {models_dir / name} is missing; the quantize step did not produce it."
            )
    d = out / model_dir_name(model)
    d.mkdir(parents=True)
    libs = libraries(shipped.variant_names(build))
    for lib in libs:
        src = lib_dir / lib
        if not src.is_file():
            raise LayoutError(
                f"library {src} is missing from the build output; the compile step is incomplete."
            )
        shutil.copyfile(src, d / lib, follow_symlinks=True)
    for name in names:
        shutil.copyfile(models_dir / name, d / name)
    (d / sbom.LICENSE_DIR).mkdir()
    for rel in sbom.LICENSE_TEXTS:
        (d / rel).write_bytes(license_texts[rel])
    glibc, glibcxx = min_runtime(d / lib for lib in libs)
    meta = metadata(d, model, build, glibc, glibcxx)
    (d / METADATA).write_text(canonical_json(meta), encoding="utf-8")
    sizes: dict[str, int | None] = {rel: (d / rel).stat().st_size for rel in relative_files(d)}
    sizes[README] = None
    sizes[SBOM] = None
    sizes[SUMS] = None
    # The README's licence table comes from the same components as the SBOM (README itself aside).
    _root, parts = sbom.artifact_parts(d, model=model, model_files=names, build=build, facts=facts)
    values = readme.readme_values(meta=meta, dir_name=d.name, sizes=sizes, licences=sbom.licence_table(parts))
    (d / README).write_text(readme.render(template, values), encoding="utf-8")
    root, parts = sbom.artifact_parts(d, model=model, model_files=names, build=build, facts=facts)
    tools = sbom.tool_parts(build["sbom"]["tools"])
    (d / SBOM).write_text(
        sbom.render_sbom(root, parts, tools, int(build["source_date_epoch"])), encoding="utf-8"
    )
    (d / SUMS).write_text(sha256sums_text(d), encoding="utf-8")
    return d


def subjects(root: Path) -> list[dict[str, object]]:
    """Every artifact file under root (the manifest excluded) with its sha256, sorted by path; each
    directory's SBOM also carries its media type, which is how the manifest references the SBOMs."""
    out: list[dict[str, object]] = []
    for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            subject: dict[str, object] = {"name": rel, "digest": {"sha256": sha256_file(p)}}
            if p.name == SBOM and p.parent.parent == root:
                subject["mediaType"] = sbom.MEDIA_TYPE
            out.append(subject)
    return out


def statement(root: Path, build: Mapping[str, Any], toolchain: Mapping[str, str]) -> dict[str, object]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) describing everything under root."""
    source = build["source"]
    assert isinstance(source, Mapping)
    base = build["base_image"]
    assert isinstance(base, Mapping)
    models = build["models"]
    assert isinstance(models, Mapping)
    deps: list[dict[str, object]] = [
        {
            "name": "whisper.cpp",
            "uri": str(source.get("uri", "")),
            "digest": {"gitCommit": source["commit"], "gitTree": source["tree"]},
            "annotations": {"version": source["version"], "provider": source.get("provider", "")},
        },
    ]
    for name in sorted(models):
        m = models[name]
        deps.append(
            {
                "name": f"model:{name}",
                "digest": {"sha256": m["sha256"]},
                "annotations": {k: v for k, v in sorted(m.items()) if k != "sha256"},
            }
        )
    deps.append(
        {
            "name": "builder-base-image",
            "uri": f"docker-image:{base['tag']}",
            "digest": {"sha256": str(base["id"]).removeprefix("sha256:")},
            "annotations": {"recipe": base.get("recipe", {})},
        }
    )
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects(root),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "profile": build["profile"],
                    "release_version": build["release_version"],
                    "models": sorted(models),
                    "quantize": list(quant_types(build["quantize"])),
                },
                "internalParameters": {
                    "cmake_flags": list(build["cmake_flags"]),
                    "cpu_backend_variant": toolchain.get("cpu_variant", ""),
                    "compiler": toolchain.get("compiler", ""),
                    "cmake": toolchain.get("cmake", ""),
                    "source_date_epoch": build["source_date_epoch"],
                    "inputs": build.get("inputs", {}),
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {"builder": {"id": BUILDER_ID}},
        },
    }


def canonical_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def parse_toolchain(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def organize(
    *,
    lib_dir: Path,
    models_dir: Path,
    toolchain: Path,
    build_json: Path,
    template: Path,
    out: Path,
    epoch: int,
    source_dir: Path,
    share_dir: Path,
    sbom_inputs: Path,
    dpkg: Path,
    os_release: Path,
) -> None:
    """The organizer stage: every per-model directory, then manifest.json, then normalised modes/mtimes.

    source_dir is the verified whisper.cpp tree, share_dir the builder image's /usr/share (Debian's
    licence texts), sbom_inputs the verified openai-whisper sdist (the weights' licence), dpkg the
    image's `dpkg-query -W` table and os_release its /etc/os-release (the SBOM's Debian purls).
    """
    build = json.loads(build_json.read_text(encoding="utf-8"))
    tpl = template.read_text(encoding="utf-8")
    if out.exists():
        raise LayoutError(f"{out} already exists; the organizer writes a fresh tree.")
    assets = build["sbom"]["assets"]
    texts = sbom.license_text_sources(
        source_dir=source_dir,
        share_dir=share_dir,
        assets_sdist=sbom_inputs / str(assets["filename"]),
        assets=assets,
    )
    facts = sbom.BuildFacts(
        packages=sbom.parse_dpkg(dpkg.read_text(encoding="utf-8")),
        distro=sbom.parse_os_release(os_release.read_text(encoding="utf-8")),
        ggml_version=sbom.ggml_version(source_dir),
    )
    out.mkdir(parents=True)
    for model in sorted(build["models"]):
        lay_out_model(out, model, models_dir, lib_dir, tpl, build, texts, facts)
    stmt = statement(out, build, parse_toolchain(toolchain.read_text(encoding="utf-8")))
    (out / MANIFEST).write_text(canonical_json(stmt), encoding="utf-8")
    normalise(out, epoch)


def check_tree(
    root: Path,
    models: Iterable[str],
    quantize: str | Iterable[str],
    cpu_variants: Sequence[str] = (CPU_FLOOR,),
) -> list[str]:
    """Findings (empty when fine): the contract's files exist, SHA256SUMS and manifest match the bytes."""
    findings: list[str] = []
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    stmt_subjects = json.loads(manifest_path.read_text())["subject"]
    listed = {s["name"]: s["digest"]["sha256"] for s in stmt_subjects}
    media = {s["name"]: s.get("mediaType") for s in stmt_subjects}
    for model in models:
        d = root / model_dir_name(model)
        want = set(expected_files(model, quantize, cpu_variants))
        got = set(relative_files(d)) if d.is_dir() else set()
        if media.get(f"{d.name}/{SBOM}") != sbom.MEDIA_TYPE:
            findings.append(f"{root / MANIFEST}: subject {d.name}/{SBOM} lacks mediaType {sbom.MEDIA_TYPE}")
        if got != want:
            findings.append(f"{d}: files {sorted(got)}, wanted {sorted(want)}")
            continue
        sums = parse_sha256sums((d / SUMS).read_text())
        if set(sums) != want - {SUMS}:
            findings.append(f"{d / SUMS}: lists {sorted(sums)}, wanted {sorted(want - {SUMS})}")
        for name, digest in sums.items():
            if (d / name).is_file() and sha256_file(d / name) != digest:
                findings.append(f"{d / name}: sha256 differs from SHA256SUMS")
        findings += [format_meta_finding(d / METADATA, f) for f in check_metadata(d)]
        for name in want:
            rel = f"{d.name}/{name}"
            if listed.get(rel) != sha256_file(d / name):
                findings.append(f"{root / rel}: manifest subject missing or its sha256 differs")
    return findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Lay out /release_artifacts (organizer stage).")
    ap.add_argument("--lib-dir", type=Path, required=True)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--toolchain", type=Path, required=True)
    ap.add_argument("--build-json", type=Path, required=True)
    ap.add_argument("--template", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--source-dir", type=Path, required=True, help="the verified whisper.cpp tree")
    ap.add_argument("--share-dir", type=Path, default=Path("/usr/share"), help="Debian's licence texts")
    ap.add_argument("--sbom-inputs", type=Path, required=True, help="holds the openai-whisper sdist")
    ap.add_argument("--dpkg", type=Path, required=True, help="`dpkg-query -W` table of the image")
    ap.add_argument("--os-release", type=Path, default=Path("/etc/os-release"))
    a = ap.parse_args(argv)
    try:
        organize(
            lib_dir=a.lib_dir,
            models_dir=a.models_dir,
            toolchain=a.toolchain,
            build_json=a.build_json,
            template=a.template,
            out=a.out,
            epoch=a.epoch,
            source_dir=a.source_dir,
            share_dir=a.share_dir,
            sbom_inputs=a.sbom_inputs,
            dpkg=a.dpkg,
            os_release=a.os_release,
        )
    except (LayoutError, readme.TemplateError, sbom.SbomError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
