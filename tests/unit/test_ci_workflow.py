"""The CI workflow can only call what exists: every `nox -s X` it names is a session of noxfile.py."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def nox_sessions() -> set[str]:
    """Session names as nox itself lists them (`nox -l`: `* name -> doc` or `- name -> doc`)."""
    out = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "-f", str(ROOT / "noxfile.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(re.findall(r"^[*-] (\S+)(?: ->|$)", out, re.M))


def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{WORKFLOW}: expected a mapping at the top level"
    return data


def run_lines() -> list[tuple[str, str]]:
    """(job id, command line) for every line of every `run:` step."""
    out = []
    for job_id, job in workflow()["jobs"].items():
        for step in job.get("steps", []):
            for line in str(step.get("run", "")).splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    out.append((job_id, line.strip()))
    return out


def nox_calls() -> list[tuple[str, str]]:
    calls = []
    for job_id, line in run_lines():
        argv = shlex.split(line)
        for i, arg in enumerate(argv[:-1]):
            if arg in ("-s", "--session", "--sessions") and "nox" in argv[:i]:
                calls.append((job_id, argv[i + 1]))
    return calls


def test_every_nox_session_the_workflow_calls_exists():
    sessions = nox_sessions()
    assert {"unit", "lint", "ci"} <= sessions, f"nox -l listed only {sorted(sessions)}"
    calls = nox_calls()
    assert calls, f"{WORKFLOW} calls no nox session at all"
    missing = [f"job {job}: nox -s {name}" for job, name in calls if name not in sessions]
    assert not missing, f"{WORKFLOW} names sessions noxfile.py lacks: {missing} (it has {sorted(sessions)})"


def test_jobs_run_nox_sessions_not_ad_hoc_test_commands():
    # The point of the matrix: CI runs what people run locally, so no job calls pytest directly.
    direct = [f"{job}: {line}" for job, line in run_lines() if re.match(r"(python -m )?pytest\b", line)]
    assert not direct, f"call a nox session instead of pytest in {WORKFLOW}: {direct}"


def test_matrix_covers_lint_both_pythons_build_verify_shell_publish_and_scheduled_benchmark():
    jobs = workflow()["jobs"]
    calls = {(job, name) for job, name in nox_calls()}
    by_session: dict[str, set[str]] = {}
    for job, name in calls:
        by_session.setdefault(name, set()).add(job)
    for session in ("lint", "unit", "build", "verify", "integration", "benchmark", "docs"):
        assert session in by_session, f"no job of {WORKFLOW} runs nox -s {session}"
    unit_jobs = by_session["unit"]
    matrices = [jobs[job].get("strategy", {}).get("matrix", {}) for job in unit_jobs]
    pythons = {str(v) for matrix in matrices for v in matrix.get("python", [])}
    assert {"3.11", "3.12"} <= pythons, f"unit tests run on {sorted(pythons)}, wanted 3.11 and 3.12"
    shell = [line for _, line in run_lines() if "test_push_to_minio" in line and "not " not in line]
    assert shell, "no job runs the shell publisher's tests (tests/integration/test_push_to_minio.py)"
    for job in by_session["benchmark"]:
        assert "schedule" in str(jobs[job].get("if", "")), f"job {job} benchmarks on every push"
        steps = jobs[job]["steps"]
        uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
        assert any("dist/bench" in str(s.get("with", {}).get("path", "")) for s in uploads), (
            f"job {job} does not upload dist/bench/ as a workflow artifact"
        )
    # PyYAML reads the bare key `on` as True (YAML 1.1); either way the schedule must be there.
    triggers = workflow().get("on") or workflow().get(True)
    assert "schedule" in triggers, f"{WORKFLOW} has no schedule trigger for the benchmark"


def test_nox_installed_by_ci_is_the_version_range_pyproject_pins():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pinned = next(d for d in dev if d.startswith("nox"))
    installs = [line for _, line in run_lines() if "pip install" in line and "nox" in line]
    assert installs
    for line in installs:
        assert f'"{pinned}"' in line, f"CI installs nox as {line!r}, pyproject.toml pins {pinned!r}"


@pytest.mark.parametrize("path", [".ci/run"])
def test_ci_entry_point_stays_the_readmes_test_command(path):
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    lines = [ln.strip() for ln in (ROOT / path).read_text().splitlines()]
    assert "make test" in lines, f"{path} must run the README's test command (make test)"


def test_every_nox_session_has_a_first_docstring_line_that_reads_whole():
    # `nox -l` shows only the first docstring line: it must be a sentence of its own.
    import ast

    tree = ast.parse((ROOT / "noxfile.py").read_text())
    sessions = [
        f for f in tree.body
        if isinstance(f, ast.FunctionDef) and any("session" in ast.unparse(d) for d in f.decorator_list)
    ]
    assert len(sessions) >= 9
    for f in sessions:
        doc = ast.get_docstring(f)
        assert doc, f"nox session {f.name} has no docstring"
        first = doc.splitlines()[0]
        assert first.endswith("."), f"{f.name}: first line {first!r} does not end a sentence"
        assert len(first) <= 110, f"{f.name}: first line too long for nox -l"


def test_the_wer_stack_is_installed_at_the_constrained_versions():
    from importlib import metadata

    pins = {}
    for line in (ROOT / "constraints" / "wer.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    assert {"jiwer", "whisper-normalizer"} <= {n.replace("_", "-") for n in pins}
    for name, version in pins.items():
        got = metadata.version(name)
        assert got == version, f"{name} {got} installed, {version} pinned"
