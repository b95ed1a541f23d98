"""Acceptance suite fixtures: one parametrised case per artifact directory, a shared report.

Artifacts come from --artifacts, else $WHISPER_RELEASE_ARTIFACTS, else dist/release_artifacts.
The report (per model: instruction counts, WER of f16 and of each quantized file per set with 95%
intervals, the paired f16 comparison, the utterances whose transcript changed, the worst
quantization error / bound per quantized file, findings) is printed as tables at the end and
written to dist/verify-report.json (--report to move it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.layout.artifacts import load_metadata, model_file_name
from whisper_release.runtime import modules
from whisper_release.verify import integrity, wer

pytest_plugins = ["whisper_release.testing"]

HERE = Path(__file__).resolve().parent
ARTIFACTS_ENV = "WHISPER_RELEASE_ARTIFACTS"
_REPORT_KEY = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("whisper-release verify")
    g.addoption(
        "--artifacts",
        default=None,
        help=f"release_artifacts directory (default: ${ARTIFACTS_ENV}, else dist/release_artifacts)",
    )
    g.addoption("--report", default=None, help="JSON report path (default: dist/verify-report.json)")
    g.addoption("--threads", type=int, default=2, help="whisper threads for transcription (default 2)")


def artifacts_root(config: pytest.Config) -> Path:
    opt = config.getoption("--artifacts") or os.environ.get(ARTIFACTS_ENV)
    return Path(opt).resolve() if opt else project_root() / "dist" / "release_artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REPORT_KEY] = {"artifacts": str(artifacts_root(config)), "models": {}, "tests": {}}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "artifact" in metafunc.fixturenames:
        root = artifacts_root(metafunc.config)
        dirs = sorted(p for p in root.glob("whisper_*_xeon") if p.is_dir()) if root.is_dir() else []
        metafunc.parametrize(
            "artifact",
            dirs or [None],
            ids=[d.name for d in dirs] or ["no-artifacts"],
            indirect=True,
            scope="session",
        )
    if "quant" in metafunc.fixturenames:
        quants = load_pins().quantizations
        metafunc.parametrize("quant", quants, ids=list(quants), scope="session")


@pytest.fixture(scope="session")
def artifact(request: pytest.FixtureRequest) -> Path:
    if request.param is None:
        root = artifacts_root(request.config)
        pytest.fail(
            f"No artifact directories (whisper_<model>_xeon) under {root}: build them first "
            f"(invoke build) or point --artifacts / ${ARTIFACTS_ENV} at them."
        )
    return Path(request.param)


@pytest.fixture(scope="session")
def artifacts(request: pytest.FixtureRequest) -> Path:
    return artifacts_root(request.config)


@pytest.fixture(scope="session")
def pins() -> Pins:
    return load_pins()


@pytest.fixture(scope="session")
def model_name(artifact: Path) -> str:
    return integrity.model_name_of(artifact)


@pytest.fixture(scope="session")
def model_file(artifact: Path, model_name: str, quant: str) -> Path:
    """The artifact's model file of one quantization type ([build] quantize)."""
    return artifact / model_file_name(model_name, quant)


@pytest.fixture
def report(request: pytest.FixtureRequest, model_name: str) -> dict[str, Any]:
    """This model's section of the report."""
    return request.config.stash[_REPORT_KEY]["models"].setdefault(model_name, {})


def _profile(artifacts: Path) -> str:
    try:
        m = json.loads((artifacts / integrity.MANIFEST).read_text(encoding="utf-8"))
        return str(m["predicate"]["buildDefinition"]["externalParameters"]["profile"])
    except (OSError, ValueError, KeyError, TypeError):
        return "offline"


@pytest.fixture(scope="session")
def source_dir(pins: Pins, artifacts: Path) -> Path:
    """The verified whisper.cpp tree the release was built from (for samples/jfk.wav)."""
    from whisper_release.inputs import fetch

    # The suite is an entry point: the profile named in the manifest is resolved here, once.
    return Path(fetch.fetch_source(pins, pins.profile(_profile(artifacts)).source))


@pytest.fixture(scope="session")
def wer_sets(pins: Pins, source_dir: Path) -> dict[str, list[wer.Clip]]:
    """The WER sets (wer.SETS): real speech ([speech], fetched and verified), synthetic, jfk."""
    return wer.pinned_wer_sets(pins, source_dir, HERE / "clips.txt")


@pytest.fixture(scope="session")
def clips(wer_sets: dict[str, list[wer.Clip]]) -> list[wer.Clip]:
    """Every utterance of every set: one transcription run per model file covers them all."""
    return wer.all_clips(wer_sets)


@pytest.fixture(scope="session")
def f16_model(pins: Pins, model_name: str) -> Path:
    """The verified f16 model the release was quantized from (not shipped; fetched into the cache)."""
    from whisper_release.inputs import fetch

    return Path(fetch.fetch_model(pins, model_name))


def clean_env() -> dict[str, str]:
    """This environment without anything that could make the loader find libraries for us, or force
    a CPU module (the tests that want one pass it explicitly)."""
    drop = ("LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT", modules.FORCE)
    return {k: v for k, v in os.environ.items() if k not in drop}


_worker_cache: dict[tuple[str, str, int, str], dict[str, Any]] = {}


def run_worker(
    lib_dir: Path, model: Path | None, clips: list[wer.Clip], threads: int, cpu_module: str | None = None
) -> dict[str, Any]:
    """verify/worker.py in a fresh interpreter; results cached per (library, model, CPU module) for the
    session. `cpu_module`: force that CPU module (WHISPER_RELEASE_CPU_MODULE), else the binding chooses."""
    key = (str(lib_dir), str(model or ""), len(clips), cpu_module or "")
    if key in _worker_cache:
        return _worker_cache[key]
    job = {
        "lib_dir": str(lib_dir),
        # What the artifact states it needs (artifact.json), as a consumer would check it.
        "required_flags": load_metadata(lib_dir)["required_cpu_flags"],
        "model": str(model) if model else None,
        "threads": threads,
        "clips": [{"name": c.name, "path": str(c.path)} for c in clips],
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "worker.py")],
        input=json.dumps(job),
        text=True,
        capture_output=True,
        env={**clean_env(), **({modules.FORCE: cpu_module} if cpu_module else {})},
        timeout=3600,
    )
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or "error" in out or not out:
        why = out.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        sig = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        out = {"error": f"{why}{sig}", "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
    _worker_cache[key] = out
    return out


@pytest.fixture(scope="session")
def threads(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--threads"))


# ---- report ------------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        tests = _CONFIG[0].stash[_REPORT_KEY]["tests"] if _CONFIG else {}
        tests[report.nodeid] = report.outcome


_CONFIG: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG[:] = [session.config]


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """One row per model and quantized file: instruction counts, WER f16 vs the quantized file over
    every utterance, the WER difference and the worst quantization error / bound."""
    head = (
        f"{'model':<10} {'file':<5} {'AVX2':>6} {'FMA':>6} {'AVX512':>6} {'AMX':>4} {'WER f16':>8} "
        f"{'WER':>8} {'delta pp':>8} {'worst err/bound':>15}"
    )
    lines = [head, "-" * len(head)]
    for model, m in sorted(data["models"].items()):
        isa = m.get("isa", {})
        # iced-x86 feature names (whisper_release.verify.isa): AVX512* and AMX_* summed per family,
        # in the libraries held to the floor (a CPU module above it may use its own ISA).
        floor_libs = [lib for lib in isa.values()
                      if not any(f.startswith(("avx512", "amx", "avx_vnni")) for f in lib["allowed_flags"])]
        tot = {
            k: sum(n for lib in (isa.values() if k in ("avx2", "fma") else floor_libs)
                   for f, n in lib["features"].items() if f.startswith(prefix))
            for k, prefix in (("avx2", "AVX2"), ("fma", "FMA"), ("avx512", "AVX512"), ("amx", "AMX_"))
        }  # fmt: skip
        w = m.get("wer", {})
        nums = m.get("numerics", {})
        f16_all = w.get("f16", {}).get("sets", {}).get(wer.POOLED, {})
        for q in sorted(set(w.get("quantized", {})) | set(nums)) or ["-"]:
            wq = w.get("quantized", {}).get(q, {}).get("sets", {}).get(wer.POOLED, {})
            lines.append(
                f"{model:<10} {q:<5} {_fmt(tot['avx2'] if isa else None, 'd'):>6} "
                f"{_fmt(tot['fma'] if isa else None, 'd'):>6} "
                f"{_fmt(tot['avx512'] if isa else None, 'd'):>6} {_fmt(tot['amx'] if isa else None, 'd'):>4} "
                f"{_fmt(f16_all.get('wer'), '.2%'):>8} {_fmt(wq.get('wer'), '.2%'):>8} "
                f"{_fmt(wq.get('paired', {}).get('delta_pp'), '+.2f'):>8} "
                f"{_fmt(nums.get(q, {}).get('worst_ratio'), '.4f'):>15}"
            )
    return lines


def wer_lines(data: dict[str, Any]) -> list[str]:
    """WER per model, file and set with its 95% interval; for quantized files the paired difference
    with f16 and its interval; then every utterance whose transcript changed."""
    head = (
        f"{'model':<10} {'file':<5} {'set':<9} {'n':>3} {'WER':>7} {'95% CI (%)':>14} "
        f"{'vs f16 pp':>9} {'95% CI (pp)':>14} {'gate':>10}"
    )
    lines = [head, "-" * len(head)]
    changed: list[str] = []
    for model, m in sorted(data["models"].items()):
        w = m.get("wer", {})
        files = [("f16", w.get("f16", {}))] + sorted(w.get("quantized", {}).items())
        for label, f in files:
            for set_name, r in f.get("sets", {}).items():
                p = r.get("paired")
                gate = "-" if not p else ("FAIL" if p["failed"] else ("pass" if p["gated"] else "not gated"))
                lines.append(
                    f"{model:<10} {label:<5} {set_name:<9} {r['n_utterances']:>3} {r['wer']:>7.2%} "
                    f"{wer.interval_text(*r['ci95']):>14} "
                    f"{_fmt(p and p['delta_pp'], '+.2f'):>9} "
                    f"{wer.interval_text(p['ci95_pp'][0], p['ci95_pp'][1], pp=True) if p else '-':>14} "
                    f"{gate:>10}"
                )
            for c in f.get("changed", []):
                changed.append(
                    f"{model} {label} {c['set']}/{c['name']}: f16 {c['f16']!r} -> {label} {c['quantized']!r} "
                    f"(edits {c['f16_edits']} -> {c['quantized_edits']}"
                    f"{'' if c['words_changed'] else ', same words after normalisation'})"
                )
    lines.append("utterances whose transcript changed between f16 and a quantized file:")
    lines += [f"  {c}" for c in changed] or ["  none"]
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    data = config.stash[_REPORT_KEY]
    if not data["models"]:
        return
    terminalreporter.section("whisper-release verification summary")
    for line in summary_lines(data):
        terminalreporter.write_line(line)
    if any(m.get("wer") for m in data["models"].values()):
        terminalreporter.write_line("")
        for line in wer_lines(data):
            terminalreporter.write_line(line)
    path = _report_path(config)
    terminalreporter.write_line(f"report: {path}")


def _report_path(config: pytest.Config) -> Path:
    opt = config.getoption("--report")
    return Path(opt) if opt else project_root() / "dist" / "verify-report.json"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    data = session.config.stash[_REPORT_KEY]
    if not data["models"] and not data["tests"]:
        return
    data["passed"] = int(exitstatus) == 0
    path = _report_path(session.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
