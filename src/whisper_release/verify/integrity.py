"""Integrity of the shipped artifacts: the quantized model files, SHA256SUMS and the manifest.

Every check returns a list of Findings instead of raising, so the verification suite can report
all that is wrong at once and then fail. A Finding names the file, what was wanted, what was
found, and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import ModelPin
from whisper_release.layout import artifacts as layout
from whisper_release.layout.artifacts import HPARAM_ORDER, relative_files, sha256_file
from whisper_release.weights import ggml, quants

SUMS = layout.SUMS
MANIFEST = layout.MANIFEST
# Blocks decoded per step: bounds the numeric check's memory to ~100 MB whatever the model size.
_CHUNK_BLOCKS = 1 << 18

REBUILD = "rebuild the artifacts (invoke build) and do not edit them by hand"


@dataclass(frozen=True)
class Finding:
    file: str
    check: str
    wanted: str
    got: str
    action: str = REBUILD

    def __str__(self) -> str:
        return f"{self.file}: {self.check}: wanted {self.wanted}, got {self.got}; {self.action}."

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def format_findings(findings: Iterable[Finding]) -> str:
    return "\n".join(f"  - {f}" for f in findings)


# ---- a quantized model file: structure ------------------------------------------------------------


def quantized_hparams(pin: ModelPin, quant: str = "q5_1") -> dict[str, int]:
    h = dict(pin.hparams)
    h["ftype"] = ggml.ftype_for(quants.codec(quant).qtype)
    return h


def check_model_file(
    path: Path, pin: ModelPin, quant: str = "q5_1", *, sums: Mapping[str, str] | None = None
) -> list[Finding]:
    """Header, hparams, tensor inventory (type, shape, byte size), exact length, sha256 vs SHA256SUMS."""
    f = str(path)
    if not path.is_file():
        return [Finding(f, "model file", f"a {quant} ggml file", "no such file")]
    findings: list[Finding] = []
    size = path.stat().st_size
    if sums is not None:
        want = sums.get(path.name)
        got = sha256_file(path)
        if want is None:
            findings.append(Finding(f, "SHA256SUMS entry", f"a line for {path.name}", "none"))
        elif want != got:
            findings.append(Finding(f, "sha256", f"{want} (SHA256SUMS)", got))
    try:
        header = ggml.read_header(path)
    except VerificationError as e:
        return [
            *findings,
            Finding(f, "ggml header", "a readable whisper ggml header", str(e).split(": ", 1)[-1]),
        ]
    want_h = quantized_hparams(pin, quant)
    for k in HPARAM_ORDER:
        if header.hparams[k] != want_h[k]:
            findings.append(
                Finding(
                    f,
                    f"hparam {k}",
                    str(want_h[k]),
                    str(header.hparams[k]),
                    f"the pins (release.toml [models.{pin.name}.hparams]) and the file disagree; {REBUILD}",
                )
            )
    if header.n_mel != pin.hparams["n_mels"]:
        findings.append(Finding(f, "mel filter rows", str(pin.hparams["n_mels"]), str(header.n_mel)))

    inventory = ggml.expected_inventory(pin.hparams, quantized=True, qtype=quants.codec(quant).qtype)
    seen: dict[str, ggml.TensorInfo] = {}
    end = header.tensor_offset
    try:
        for info in ggml.iter_tensors(path):
            if info.name in seen:
                findings.append(Finding(f, f"tensor {info.name}", "one record", "a duplicate record"))
            seen[info.name] = info
            end = info.data_offset + info.nbytes
    except VerificationError as e:
        findings.append(
            Finding(
                f,
                "tensor records",
                "complete tensor records up to the end of the file",
                str(e).split(": ", 1)[-1].split("; ")[0],
            )
        )
    for name, (ttype, shape) in inventory.items():
        found = seen.get(name)
        if found is None:
            findings.append(Finding(f, f"tensor {name}", f"{ggml.type_name(ttype)} {list(shape)}", "missing"))
            continue
        if found.ttype != ttype or found.shape != shape:
            findings.append(
                Finding(
                    f,
                    f"tensor {name}",
                    f"{ggml.type_name(ttype)} {list(shape)}",
                    f"{ggml.type_name(found.ttype)} {list(found.shape)}",
                )
            )
        elif found.nbytes != ggml.tensor_nbytes(ttype, shape):
            findings.append(
                Finding(f, f"tensor {name} bytes", str(ggml.tensor_nbytes(ttype, shape)), str(found.nbytes))
            )
    for name in seen.keys() - inventory.keys():
        findings.append(
            Finding(f, f"tensor {name}", "no such tensor (whisper.cpp does not load it)", "present")
        )

    want_size = header.tensor_offset + sum(
        12 + 4 * len(shape) + len(name.encode()) + ggml.tensor_nbytes(ttype, shape)
        for name, (ttype, shape) in inventory.items()
    )
    if size != want_size:
        findings.append(
            Finding(f, "file length", f"{want_size} bytes (header + every tensor)", f"{size} bytes")
        )
    elif end != size:
        findings.append(
            Finding(f, "file end", f"the last tensor ending at byte {size}", f"it ends at byte {end}")
        )
    pinned = pin.quantized_size(quant)
    if pinned is not None and size != pinned:
        findings.append(
            Finding(f, "file length", f"{pinned} bytes (release.toml {quant}_size)", f"{size} bytes")
        )
    return findings


# ---- a quantized model file: numerics ------------------------------------------------------------


@dataclass
class Numerics:
    """A quantized file against its f16 source, every element of every tensor."""

    quantized_tensors: int = 0
    copied_tensors: int = 0
    blocks: int = 0
    elements: int = 0
    over_bound: int = 0
    worst_ratio: float = 0.0  # max |quantized - f16| / bound over all elements
    worst_tensor: str = ""
    worst_error: float = 0.0
    worst_bound: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["findings"] = [x.as_dict() for x in self.findings]
        return d


def _memmap(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r")


def check_numerics(quantized_path: Path, f16_path: Path, quant: str = "q5_1") -> Numerics:
    """Decode every block of the `quant` file and compare it with the f16 source: each element within
    its block's bound (the rounding step plus the f16 rounding of the stored scale and offset: the
    codec's error_bound, e.g. quants.q5_1_error_bound); copied tensors byte-identical."""
    out = Numerics()
    codec = quants.codec(quant)
    qf, sf = str(quantized_path), str(f16_path)
    try:
        q_infos = {t.name: t for t in ggml.iter_tensors(quantized_path)}
        s_infos = {t.name: t for t in ggml.iter_tensors(f16_path)}
    except VerificationError as e:
        out.findings.append(Finding(qf, "numeric check", f"readable {quant} and f16 files", str(e)))
        return out
    qmap, smap = _memmap(quantized_path), _memmap(f16_path)
    for name, qi in q_infos.items():
        si = s_infos.get(name)
        if si is None:
            out.findings.append(
                Finding(qf, f"tensor {name}", f"a source tensor of that name in {sf}", "none")
            )
            continue
        if qi.shape != si.shape:
            out.findings.append(
                Finding(qf, f"tensor {name} shape", f"{list(si.shape)} (as in {sf})", f"{list(qi.shape)}")
            )
            continue
        if qi.ttype != codec.qtype:
            out.copied_tensors += 1
            if qi.ttype != si.ttype or not np.array_equal(
                qmap[qi.data_offset : qi.data_offset + qi.nbytes],
                smap[si.data_offset : si.data_offset + si.nbytes],
            ):
                out.findings.append(
                    Finding(
                        qf,
                        f"tensor {name}",
                        f"a byte-identical copy of the {ggml.type_name(si.ttype)} source tensor",
                        f"{ggml.type_name(qi.ttype)} data that differs",
                    )
                )
            continue
        if si.ttype not in (ggml.GGML_TYPE_F16, ggml.GGML_TYPE_F32):
            out.findings.append(
                Finding(
                    sf,
                    f"tensor {name}",
                    "f16 or f32 source data",
                    ggml.type_name(si.ttype),
                    "compare against the f16 model the release was quantized from",
                )
            )
            continue
        out.quantized_tensors += 1
        _compare_tensor(out, qf, name, qmap, qi, smap, si, quant, codec)
    return out


def _compare_tensor(
    out: Numerics,
    qf: str,
    name: str,
    qmap: np.ndarray,
    qi: ggml.TensorInfo,
    smap: np.ndarray,
    si: ggml.TensorInfo,
    quant: str,
    codec: quants.Codec,
) -> None:
    qk, bb = codec.block_elements, codec.block_bytes
    n_blocks = qi.n_elements // qk
    src_dtype = np.dtype("<f2") if si.ttype == ggml.GGML_TYPE_F16 else np.dtype("<f4")
    over = 0
    first_bad: tuple[int, int, float, float] | None = None
    for b0 in range(0, n_blocks, _CHUNK_BLOCKS):
        b1 = min(n_blocks, b0 + _CHUNK_BLOCKS)
        raw = qmap[qi.data_offset + b0 * bb : qi.data_offset + b1 * bb]
        n = (b1 - b0) * qk
        got = codec.decode(raw, n).reshape(-1, qk).astype(np.float64)
        bound = codec.error_bound(raw, n)[:, None]
        off = si.data_offset + b0 * qk * src_dtype.itemsize
        src = (
            smap[off : off + n * src_dtype.itemsize]
            .view(src_dtype)
            .astype(np.float64)
            .reshape(-1, qk)
        )
        err = np.abs(got - src)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
        ratio = np.where(np.isnan(ratio), np.inf, ratio)  # a NaN from a corrupt scale is a failure
        bad = ratio > 1.0
        if bad.any():
            over += int(bad.sum())
            if first_bad is None:
                bi, ei = np.argwhere(bad)[0]
                first_bad = (b0 + int(bi), int(ei), float(err[bi, ei]), float(bound[bi, 0]))
        k = int(np.argmax(ratio))
        r = float(ratio.reshape(-1)[k])
        if r > out.worst_ratio or not out.worst_tensor:
            bi = k // qk
            out.worst_ratio, out.worst_tensor = r, name
            out.worst_error, out.worst_bound = float(err.reshape(-1)[k]), float(bound[bi, 0])
    out.blocks += n_blocks
    out.elements += qi.n_elements
    out.over_bound += over
    if first_bad is not None:
        blk, el, e, bnd = first_bad
        byte = qi.data_offset + blk * bb
        out.findings.append(
            Finding(
                qf,
                f"{quant} tensor {name}",
                "every element within its block's quantisation bound",
                f"{over} element(s) outside it, first in block {blk} (file byte {byte}) element {el}: "
                f"|error| {e:.3g} > bound {bnd:.3g}",
            )
        )


# ---- SHA256SUMS and the manifest ------------------------------------------------------------------


def parse_sums(path: Path) -> tuple[dict[str, str], list[Finding]]:
    """name -> sha256 from a SHA256SUMS file (`sha256sum` format), with findings for bad lines."""
    entries: dict[str, str] = {}
    findings: list[Finding] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, [Finding(str(path), "SHA256SUMS", "a SHA256SUMS file in the artifact directory", "none")]
    except UnicodeDecodeError:
        return {}, [Finding(str(path), "SHA256SUMS", "UTF-8 text", "undecodable bytes")]
    entries, bad = layout.read_sha256sums(text)
    for n, line in bad:
        findings.append(
            Finding(str(path), f"line {n}", "'<64 hex sha256>  <file name>', each file once", repr(line))
        )
    return entries, findings


def check_sums(artifact_dir: Path) -> list[Finding]:
    """SHA256SUMS lists exactly the directory's other files, each with its true sha256."""
    sums_path = artifact_dir / SUMS
    entries, findings = parse_sums(sums_path)
    if not sums_path.is_file():
        return findings
    present = {n for n in relative_files(artifact_dir) if n != SUMS and (artifact_dir / n).is_file()}
    for name in sorted(entries.keys() - present):
        findings.append(Finding(str(artifact_dir / name), "file listed in SHA256SUMS", "present", "missing"))
    for name in sorted(present - entries.keys()):
        findings.append(Finding(str(sums_path), f"entry for {name}", "a line for every shipped file", "none"))
    for name in sorted(entries.keys() & present):
        got = sha256_file(artifact_dir / name)
        if got != entries[name]:
            findings.append(Finding(str(artifact_dir / name), "sha256", f"{entries[name]} (SHA256SUMS)", got))
    return findings


def check_layout(artifact_dir: Path, expected: Iterable[str]) -> list[Finding]:
    """The directory holds exactly the release contract's files, each a regular file."""
    want = set(expected)
    got = set(relative_files(artifact_dir)) if artifact_dir.is_dir() else set()
    findings = [
        Finding(str(artifact_dir / n), "shipped file", "present", "missing") for n in sorted(want - got)
    ]
    findings += [
        Finding(str(artifact_dir / n), "shipped file", "not part of the release", "present")
        for n in sorted(got - want)
    ]
    for n in sorted(want & got):
        p = artifact_dir / n
        if p.is_symlink() or not p.is_file():
            findings.append(
                Finding(
                    str(p),
                    "file kind",
                    "a regular file (object stores keep no symlinks)",
                    "a symlink" if p.is_symlink() else "not a regular file",
                )
            )
    return findings


def load_manifest(root: Path) -> tuple[dict[str, str], list[Finding]]:
    """path (relative to root) -> sha256 from manifest.json's in-toto subject list."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, [
            Finding(str(path), "manifest", "an in-toto statement beside the artifact directories", "none")
        ]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {}, [Finding(str(path), "manifest", "valid JSON", f"a parse error ({e})")]
    subjects = data.get("subject") if isinstance(data, dict) else None
    if not isinstance(subjects, list):
        return {}, [Finding(str(path), "manifest", "a 'subject' list", "none")]
    out: dict[str, str] = {}
    findings: list[Finding] = []
    for s in subjects:
        try:
            out[str(s["name"])] = str(s["digest"]["sha256"])
        except (KeyError, TypeError):
            findings.append(Finding(str(path), "manifest subject", "{name, digest: {sha256}}", repr(s)[:120]))
    return out, findings


def check_manifest(root: Path, artifact_dir: Path) -> list[Finding]:
    """Every file of `artifact_dir` is a manifest subject with the file's sha256, and vice versa."""
    subjects, findings = load_manifest(root)
    if findings and not subjects:
        return findings
    prefix = artifact_dir.name + "/"
    mine = {k[len(prefix) :]: v for k, v in subjects.items() if k.startswith(prefix)}
    present = set()
    if artifact_dir.is_dir():
        present = {n for n in relative_files(artifact_dir) if (artifact_dir / n).is_file()}
    manifest = str(root / MANIFEST)
    for name in sorted(mine.keys() - present):
        findings.append(Finding(str(artifact_dir / name), "manifest subject", "present", "missing"))
    for name in sorted(present - mine.keys()):
        findings.append(Finding(manifest, f"subject {prefix}{name}", "listed", "not listed"))
    for name in sorted(mine.keys() & present):
        got = sha256_file(artifact_dir / name)
        if got != mine[name]:
            findings.append(Finding(str(artifact_dir / name), "sha256", f"{mine[name]} (manifest.json)", got))
    return findings


def model_name_of(artifact_dir: Path) -> str:
    """`whisper_<model>_xeon` -> `<model>`."""
    model = layout.model_of_dir_name(artifact_dir.name)
    if model is None:
        raise VerificationError(f"{artifact_dir} is not an artifact directory: wanted whisper_<model>_xeon.")
    return model


def check_metadata(artifact_dir: Path) -> list[Finding]:
    """artifact.json: its v1 shape, and every fact it states true of the directory's files."""
    where = str(artifact_dir / layout.METADATA)
    return [
        Finding(where, f"field {fld!r}", wanted, got, "pull or build the artifact again")
        for fld, wanted, got in layout.check_metadata(artifact_dir)
    ]
