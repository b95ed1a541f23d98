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
from whisper_release.layout.artifacts import cpu_module_file, expected_files, load_metadata, model_file_name
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
    want = expected_files(model_name, pins.quantizations, pins.build.cpu_variants)
    findings = integrity.check_layout(artifact, want)
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
    [build].required_cpu_flags and what they imply (whisper_release.verify.isa); a runtime CPU module
    against its own variant's flags from release.toml (the pins, not the artifact's own claim)."""
    flags = list(pins.build.required_cpu_flags)
    modules = {cpu_module_file(v.name): list(v.cpu_flags) for v in pins.build.shipped_variants()}
    libs = isa.shipped_libraries(artifact)
    findings: list[Finding] = []
    audits = {}
    for lib in libs:
        own = modules.get(lib.name, flags)
        a = isa.audit_library(lib, own, must_use=isa.must_use(lib, own, flags))
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
            Finding(str(lib), f"{f} instructions", "at least 1 (its CPU variant's kernels)",
                    "0: a build without them", REBUILD_ISA)
            for f in a.missing
        ]  # fmt: skip
    if not any(lib.name.startswith(isa.CPU_BACKEND_PREFIX) for lib in libs):
        b = pins.build
        floor = cpu_module_file(b.cpu_variants[0]) if b.runtime_dispatch else "libggml-cpu.so.0"
        findings.append(Finding(str(artifact / floor), "ggml CPU backend", "present", "missing"))
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
    module = out["cpu_module"]
    report["system_info"] = info
    report["library_version"] = out["version"]
    report["cpu_module"] = module
    flags = dict(re.findall(r"([A-Z0-9_]+) = (\d+)", info))
    # What the chosen module was built for decides what ggml may report (a module above the floor
    # reports its own ISA; the floor, linked or loaded, none of AVX-512, VNNI or AMX).
    built_for = set(next(v["cpu_flags"] for v in load_metadata(artifact)["cpu_variants"]
                         if v["name"] == module["variant"]))  # fmt: skip
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
        Finding(str(artifact / module["library"]), f"whisper_print_system_info {k} "
                f"(module {module['variant']})", want, flags.get(k, "absent"), REBUILD_ISA)
        for k, flag in SYSTEM_INFO_FLAGS.items()
        if flags.get(k, "0") != (want := "1" if flag in built_for else "0")
    ]  # fmt: skip
    _fail_on(findings, f"{artifact.name}: the library's own report ({info.strip()}) with {module['variant']}")


# whisper_print_system_info's key -> the CPU flag a module must be built for to report it as 1.
SYSTEM_INFO_FLAGS = {
    "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8",
}  # fmt: skip


def test_every_cpu_module_this_host_runs(
    artifact: Path,
    model_name: str,
    pins: Pins,
    clips: list[wer.Clip],
    wer_sets: dict[str, list[wer.Clip]],
    threads: int,
    report: dict[str, Any],
) -> None:
    """Each CPU module this CPU can run transcribes every clip with the primary model file, forced
    (WHISPER_RELEASE_CPU_MODULE), and its WER equals the floor's within the primary type's paired
    gate; a module this CPU lacks the flags for is recorded as not exercised here, by name."""
    meta = load_metadata(artifact)
    variants = meta.get("cpu_variants", [])
    quant = pins.primary_quantization
    primary = artifact / model_file_name(model_name, quant)
    have = cpu.cpuid_flags()
    resamples, seed = wer.bootstrap_settings(pins.verify)
    max_delta = pins.verify.max_wer_delta_pp[quant]
    rows: dict[str, Any] = report.setdefault("cpu_modules", {})
    findings: list[Finding] = []
    floor = variants[0]["name"] if variants else None
    if len(variants) <= 1:
        rows[floor or "haswell"] = {"exercised": "by every other test (linked, single ISA)"}
        return
    hyp: dict[str, dict[str, str]] = {}
    for v in variants:
        missing = [f for f in v["cpu_flags"] if f not in have]
        if missing:
            rows[v["name"]] = {"exercised": False, "reason": f"this CPU lacks {', '.join(missing)}"}
            continue
        out = run_worker(artifact, primary, clips, threads, cpu_module=v["name"])
        if "error" in out:
            what = f"{quant} transcription with module {v['name']}"
            lib = str(artifact / v["library"])
            findings.append(Finding(lib, what, "every clip transcribed", out["error"]))
            continue
        hyp[v["name"]] = {n: "".join(s[2] for s in segs) for n, segs in out["segments"].items()}
        rows[v["name"]] = {"exercised": True, "module": out["cpu_module"]}
    if floor not in hyp:
        _fail_on(findings, f"{artifact.name}: CPU modules")
        return
    library = {str(v["name"]): artifact / str(v["library"]) for v in variants}
    for name, h in hyp.items():
        if name == floor:
            continue
        per_set = {}
        for set_name, set_clips in {**wer_sets, wer.POOLED: clips}.items():
            g = wer.paired_gate(set_name, set_clips, hyp[floor], h, max_delta, resamples=resamples, seed=seed)
            per_set[set_name] = g.as_dict()
            if g.failed:
                findings.append(Finding(
                    str(library[name]),
                    f"WER of {primary.name} with module {name} minus with {floor}, {g.set} set "
                    f"({g.n} utterances, paired bootstrap)",
                    f"95% interval's lower bound <= {g.max_delta_pp:.2f} pp (release.toml [verify] "
                    f"max_{quant}_wer_delta_pp)",
                    f"{g.delta_pp:+.2f} pp, 95% interval {wer.interval_text(g.low_pp, g.high_pp, pp=True)}",
                    f"leave {name} out of release.toml [build] cpu_variants until its kernels agree",
                ))  # fmt: skip
        same = sum(h[c] == hyp[floor][c] for c in h)
        rows[name].update(paired_against_floor=per_set, clips=len(h), identical_transcripts=same)
    _fail_on(findings, f"{artifact.name}: CPU modules")


def test_quantized_model_file(
    artifact: Path, model_file: Path, model_name: str, quant: str, pins: Pins, report: dict[str, Any]
) -> None:
    sums, bad = integrity.parse_sums(artifact / integrity.SUMS)
    findings = bad + integrity.check_model_file(model_file, pins.model(model_name), quant, sums=sums)
    report.setdefault("model_file", {})[quant] = {
        "path": str(model_file),
        "findings": [f.as_dict() for f in findings],
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
    wer_sets: dict[str, list[wer.Clip]],
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
    (jfk,) = wer_sets["jfk"]
    if not out["segments"].get(jfk.name):
        findings.append(Finding(str(jfk.path), "segments", "at least one transcribed segment", "none"))
    report.setdefault("hparams_loaded", {})[quant] = out["hparams"]
    _fail_on(findings, f"{model_file.name}: load and transcribe")


def _worst(clips: list[wer.Clip], r: wer.SetResult, k: int = 3) -> str:
    """The utterances that contribute most edits to a set's WER: where to look first."""
    ranked = sorted(zip(clips, r.edits, strict=True), key=lambda ce: -ce[1])[:k]
    words = {c.name: len(wer.normalize(c.reference).split()) for c in clips}
    return ", ".join(f"{c.name} ({e} edits / {words[c.name]} words)" for c, e in ranked if e) or "none"


def _ceiling_finding(
    path: Path, set_name: str, clips: list[wer.Clip], r: wer.SetResult, ceiling: float
) -> Finding:
    return Finding(
        str(path),
        f"WER on the {set_name} set ({r.n} utterances, {r.words} words)",
        f"<= {ceiling:.2%} (release.toml [verify.wer_ceiling.{set_name}])",
        f"{r.wer:.2%}, 95% interval {wer.interval_text(r.low, r.high)} %; "
        f"worst utterances: {_worst(clips, r)}",
        "check those clips' transcripts and reference texts in dist/verify-report.json",
    )


def _paired_finding(path: Path, quant: str, g: wer.PairedGate, gate: str, moved: list[str]) -> Finding:
    return Finding(
        str(path),
        f"WER {quant} minus f16 on the {g.set} set ({g.n} utterances, paired bootstrap)",
        f"95% interval's lower bound <= {g.max_delta_pp:.2f} pp (release.toml [verify] {gate})",
        f"{g.delta_pp:+.2f} pp, 95% interval {wer.interval_text(g.low_pp, g.high_pp, pp=True)}; "
        f"words changed in: {', '.join(moved) or 'none'}",
        "see models.<m>.wer.quantized.<q>.changed in dist/verify-report.json",
    )


def test_word_error_rate(
    artifact: Path,
    model_file: Path,
    f16_model: Path,
    model_name: str,
    quant: str,
    pins: Pins,
    clips: list[wer.Clip],
    wer_sets: dict[str, list[wer.Clip]],
    threads: int,
    report: dict[str, Any],
) -> None:
    """WER of f16 and of the quantized file on each set (and all sets pooled) with 95% bootstrap
    intervals; each under its ceiling; the file against f16 by the paired bootstrap gate."""
    gates = pins.verify
    resamples, seed = wer.bootstrap_settings(gates)
    gate = f"max_{quant}_wer_delta_pp"
    if quant not in gates.max_wer_delta_pp:
        pytest.fail(
            f"release.toml [verify] has no max_{quant}_wer_delta_pp, the WER gate for the shipped {quant} "
            "files; add it.",
            pytrace=False,
        )
    max_delta = gates.max_wer_delta_pp[quant]
    tables = gates.wer_ceiling
    missing = [s for s in wer_sets if model_name not in tables.get(s, {})]
    if missing:
        pytest.fail(
            f"release.toml [verify.wer_ceiling.<set>] has no ceiling for {model_name} in set(s) "
            f"{', '.join(missing)} (wanted one per set of {', '.join(wer_sets)}); add it.",
            pytrace=False,
        )
    ceilings = {s: float(tables[s][model_name]) for s in wer_sets}
    # The f16 transcription is cached per session (run_worker): one run serves every quantized file.
    files = (("f16", f16_model), (quant, model_file))
    hyp = {label: _transcripts(artifact, path, clips, threads, label) for label, path in files}
    scored = {**wer_sets, wer.POOLED: clips}
    w = report.setdefault("wer", {})
    w.update(
        bootstrap={"resamples": resamples, "seed": seed, "confidence": wer.CONFIDENCE},
        ceiling=ceilings,
        clips={s: [{"name": c.name, "voice": c.voice, "reference": c.reference} for c in cs]
               for s, cs in wer_sets.items()},
    )  # fmt: skip
    findings = []
    for label, path in files:
        entry: dict[str, Any] = {"transcripts": hyp[label], "sets": {}}
        for set_name, set_clips in scored.items():
            r = wer.score_set(set_name, set_clips, hyp[label], resamples=resamples, seed=seed)
            entry["sets"][set_name] = r.as_dict()
            if set_name in ceilings and r.wer > ceilings[set_name]:
                findings.append(_ceiling_finding(path, set_name, list(set_clips), r, ceilings[set_name]))
            if label == "f16":
                continue
            g = wer.paired_gate(set_name, set_clips, hyp["f16"], hyp[label], max_delta, resamples=resamples,
                                seed=seed)  # fmt: skip
            entry["sets"][set_name]["paired"] = g.as_dict()
            if g.failed:
                changed = wer.changed_utterances({set_name: list(set_clips)}, hyp["f16"], hyp[label])
                findings.append(_paired_finding(path, quant, g, gate, [c["name"] for c in changed
                                                                       if c["words_changed"]]))  # fmt: skip
        if label == "f16":
            w["f16"] = entry
        else:
            entry["changed"] = wer.changed_utterances(wer_sets, hyp["f16"], hyp[label])
            w.setdefault("quantized", {})[quant] = entry
    _fail_on(findings, f"{model_name}: word error rate")
