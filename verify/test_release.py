"""The release's acceptance checks, one parametrised case per whisper_<model>_xeon directory.

Each check collects every finding (file, wanted, got, what to do) and fails once, listing them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import run_worker

from whisper_release.core.pins import Pins
from whisper_release.layout.artifacts import expected_files
from whisper_release.runtime import cpu
from whisper_release.verify import integrity, isa, sbom, wer
from whisper_release.verify.integrity import Finding, format_findings
from whisper_release.weights import ggml

REBUILD_ISA = (
    "rebuild with release.toml [build].cmake_flags (every AVX-512/VNNI/AMX switch OFF, GGML_NATIVE OFF)"
)


def _fail_on(findings: list[Finding], what: str) -> None:
    if findings:
        pytest.fail(f"{what}: {len(findings)} finding(s)\n{format_findings(findings)}", pytrace=False)


def test_host_cpu_has_the_required_flags(pins: Pins) -> None:
    required = list(pins.build.required_cpu_flags)
    missing = cpu.missing_flags(required)
    if missing:
        pytest.fail(
            f"This host lacks {', '.join(missing)} (from CPUID), which the release needs "
            f"(wanted all of {', '.join(required)}); run the verification on a Haswell-class or newer "
            f"x86-64 CPU.",
            pytrace=False,
        )


def test_files_sha256sums_manifest_and_metadata(
    artifact: Path, artifacts: Path, model_name: str, pins: Pins, report: dict[str, Any]
) -> None:
    findings = integrity.check_layout(artifact, expected_files(model_name, pins.quantizations))
    findings += integrity.check_sums(artifact)
    findings += integrity.check_manifest(artifacts, artifact)
    findings += integrity.check_metadata(artifact)
    report["files"] = {"findings": [f.as_dict() for f in findings]}
    _fail_on(findings, f"{artifact.name}: files, SHA256SUMS and manifest.json")


def test_sbom_lists_every_file_and_licence(artifact: Path, report: dict[str, Any]) -> None:
    findings = sbom.check_sbom(artifact)
    report["sbom"] = {"findings": [f.as_dict() for f in findings]}
    _fail_on(findings, f"{artifact.name}: {artifact.name}/sbom.cdx.json against the files and licence texts")


def test_isa_audit_of_every_library(artifact: Path, pins: Pins, report: dict[str, Any]) -> None:
    """Every instruction of every shipped ELF, decoded, against the x86-64 baseline plus release.toml
    [build].required_cpu_flags and what they imply (whisper_release.verify.isa)."""
    flags = list(pins.build.required_cpu_flags)
    libs = isa.shipped_libraries(artifact)
    findings: list[Finding] = []
    audits = {}
    for lib in libs:
        a = isa.audit_library(lib, flags, must_use=isa.must_use(lib))
        audits[lib.name] = a.as_dict()
        for v in a.examples:
            findings.append(
                Finding(
                    str(lib),
                    f"instruction at offset {v.offset:#x} ({v.function})",
                    f"only features of {v.allowed}",
                    f"`{v.instruction}`, which needs {v.feature}",
                    REBUILD_ISA,
                )
            )
        for feat, n in a.violations.items():
            shown = sum(1 for v in a.examples if v.feature == feat)
            if n > shown:
                more = f"{n} ({n - shown} more not listed)"
                findings.append(Finding(str(lib), f"{feat} instructions", "0", more, REBUILD_ISA))
        findings += [
            Finding(str(lib), f"{f} instructions", "at least 1 (the AVX2+FMA kernels)", "0: a scalar build",
                    REBUILD_ISA)
            for f in a.missing
        ]  # fmt: skip
    if not any(lib.name.startswith(isa.CPU_BACKEND_PREFIX) for lib in libs):
        findings.append(Finding(str(artifact / "libggml-cpu.so.0"), "ggml CPU backend", "present", "missing"))
    report["isa"] = audits
    _fail_on(findings, f"{artifact.name}: instruction-set audit")


def test_library_loads_alone_and_reports_avx2_fma(
    artifact: Path, threads: int, report: dict[str, Any]
) -> None:
    out = run_worker(artifact, None, [], threads)
    if "error" in out:
        pytest.fail(
            f"{artifact / 'libwhisper.so'}: wanted a ctypes load with no LD_LIBRARY_PATH, got: "
            f"{out['error']}",
            pytrace=False,
        )
    info = out["system_info"]
    report["system_info"] = info
    report["library_version"] = out["version"]
    flags = dict(re.findall(r"([A-Z0-9_]+) = (\d+)", info))
    findings = [
        Finding(
            str(artifact / "libwhisper.so"),
            f"whisper_print_system_info {k}",
            "1",
            flags.get(k, "absent"),
            REBUILD_ISA,
        )
        for k in ("AVX2", "FMA", "F16C")
        if flags.get(k) != "1"
    ]
    findings += [
        Finding(str(artifact / "libwhisper.so"), f"whisper_print_system_info {k}", "0", v, REBUILD_ISA)
        for k, v in flags.items()
        if (k.startswith("AVX512") or k.startswith("AMX")) and v != "0"
    ]
    _fail_on(findings, f"{artifact.name}: the library's own report ({info.strip()})")


def test_quantized_model_file(
    artifact: Path, model_file: Path, model_name: str, quant: str, pins: Pins, report: dict[str, Any]
) -> None:
    sums, bad = integrity.parse_sums(artifact / integrity.SUMS)
    findings = bad + integrity.check_model_file(model_file, pins.model(model_name), quant, sums=sums)
    report.setdefault("model_file", {})[quant] = {
        "path": str(model_file), "findings": [f.as_dict() for f in findings]
    }
    _fail_on(findings, f"{model_file.name}: header, tensors, length and sha256")


def test_quantized_numerics_against_f16(
    model_file: Path, f16_model: Path, quant: str, report: dict[str, Any]
) -> None:
    n = integrity.check_numerics(model_file, f16_model, quant)
    report.setdefault("numerics", {})[quant] = n.as_dict()
    _fail_on(n.findings, f"{model_file.name}: {quant} blocks against {f16_model}")
    assert n.quantized_tensors > 0, f"{model_file}: wanted {quant} tensors, got none"


def _transcripts(
    artifact: Path, model: Path, clips: list[wer.Clip], threads: int, label: str
) -> dict[str, str]:
    out = run_worker(artifact, model, clips, threads)
    if "error" in out:
        pytest.fail(
            f"{model}: wanted a {label} transcription with {artifact / 'libwhisper.so'}, got: {out['error']}",
            pytrace=False,
        )
    return {name: "".join(s[2] for s in segs) for name, segs in out["segments"].items()}


def test_quantized_loads_and_transcribes(
    artifact: Path,
    model_file: Path,
    model_name: str,
    quant: str,
    pins: Pins,
    clips: list[wer.Clip],
    threads: int,
    report: dict[str, Any],
) -> None:
    out = run_worker(artifact, model_file, clips, threads)
    if "error" in out:
        pytest.fail(
            f"{model_file}: wanted it loaded and transcribed by {artifact / 'libwhisper.so'}, got: "
            f"{out['error']}",
            pytrace=False,
        )
    want = integrity.quantized_hparams(pins.model(model_name), quant)
    # whisper_model_ftype() reports the type without the quantization version (2009 -> 9).
    want["ftype"] %= ggml.GGML_QNT_VERSION_FACTOR
    findings = [
        Finding(str(model_file), f"hparam {k} as whisper.cpp loaded it", str(v), str(out["hparams"][k]))
        for k, v in want.items()
        if out["hparams"][k] != v
    ]
    jfk = clips[0]
    if not out["segments"].get(jfk.name):
        findings.append(Finding(str(jfk.path), "segments", "at least one transcribed segment", "none"))
    report.setdefault("hparams_loaded", {})[quant] = out["hparams"]
    _fail_on(findings, f"{model_file.name}: load and transcribe")


def test_word_error_rate(
    artifact: Path,
    model_file: Path,
    f16_model: Path,
    model_name: str,
    quant: str,
    pins: Pins,
    clips: list[wer.Clip],
    threads: int,
    report: dict[str, Any],
) -> None:
    refs = [c.reference for c in clips]
    results: dict[str, Any] = {}
    # The f16 transcription is cached per session (run_worker): one run serves every quantized file.
    for label, path in (("f16", f16_model), (quant, model_file)):
        hyp = _transcripts(artifact, path, clips, threads, label)
        r = wer.corpus_wer(refs, [hyp[c.name] for c in clips])
        results[label] = {**r.as_dict(), "transcripts": hyp}
    delta_pp = 100.0 * (results[quant]["wer"] - results["f16"]["wer"])
    gates = pins.verify
    ceiling = gates.wer_ceiling[model_name]
    if quant not in gates.max_wer_delta_pp:
        pytest.fail(
            f"release.toml [verify] has no max_{quant}_wer_delta_pp, the WER gate for the shipped {quant} "
            "files; add it.",
            pytrace=False,
        )
    max_delta = gates.max_wer_delta_pp[quant]
    w = report.setdefault("wer", {})
    w.update(
        f16=results["f16"],
        ceiling=ceiling,
        clips=[{"name": c.name, "voice": c.voice, "reference": c.reference} for c in clips],
    )
    w.setdefault("quantized", {})[quant] = {**results[quant], "delta_pp": delta_pp, "max_delta_pp": max_delta}
    findings = []
    for label, path in (("f16", f16_model), (quant, model_file)):
        if results[label]["wer"] > ceiling:
            findings.append(
                Finding(
                    str(path),
                    f"WER over {len(clips)} clips",
                    f"<= {ceiling:.2%} (release.toml [verify.wer_ceiling])",
                    f"{results[label]['wer']:.2%}",
                    "see the transcripts in dist/verify-report.json",
                )
            )
    if delta_pp > max_delta:
        findings.append(
            Finding(
                str(model_file),
                f"WER {quant} minus f16",
                f"<= {max_delta:.2f} pp",
                f"{delta_pp:+.2f} pp",
                "see the transcripts in dist/verify-report.json",
            )
        )
    _fail_on(findings, f"{model_name}: word error rate")
