"""pytest plugin shared by tests/ and verify/: skips of required tools cannot hide in CI.

Use `require_tool("docker")` in a test: on a developer machine a missing tool skips the test;
with CI set (or WHISPER_RELEASE_STRICT=1) any skip at all fails the run, listing every skipped test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def strict() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("WHISPER_RELEASE_STRICT"))


def unavailable(msg: str, ci_hint: str = "") -> NoReturn:
    """Something a test needs is missing: fail in strict mode (with `ci_hint`), else skip."""
    if strict():
        pytest.fail(msg + ci_hint)
    pytest.skip(msg)


def require_tool(tool: str, why: str = "") -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"required tool {tool!r} is not on PATH" + (f" ({why})" if why else "")
        unavailable(msg, "; CI must install it (scripts/install-system-deps.sh)")
    return path


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # pytest reports an xfail as skipped too (with `wasxfail` set); an expected failure states a
    # known, named limitation and shows as "xfailed", so it is not a hidden skip.
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if strict() and _skipped:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"strict mode (CI): {len(_skipped)} test(s) skipped, which CI treats as failure:"]
        lines += [f"  {nodeid}" for nodeid in _skipped]
        if tr is not None:
            for line in lines:
                tr.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
