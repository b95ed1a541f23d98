"""whisper_release.testing in strict (CI) mode: a skip fails the run, an expected failure does not.

Each case runs pytest in a subprocess: the plugin keeps its list of skipped tests in the module,
which an in-process run would share with this session.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CASES = """
import pytest

@pytest.fixture
def unavailable():
    pytest.xfail("the suite has no such package")

def test_passes():
    pass

def test_xfail_in_body():
    pytest.xfail("a known limitation, named")

def test_xfail_in_fixture(unavailable):
    pass

@pytest.mark.xfail(reason="marked", strict=True)
def test_marked_xfail():
    assert False
"""


@pytest.fixture
def strict_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("WHISPER_RELEASE_STRICT", "1")


def test_strict_mode_does_not_count_xfail_as_skip(pytester, strict_env):
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "whisper_release.testing")
    result.assert_outcomes(passed=1, xfailed=3)
    assert result.ret == pytest.ExitCode.OK
    assert "strict mode (CI)" not in result.stdout.str()


def test_strict_mode_fails_on_a_skip_and_names_it(pytester, strict_env):
    pytester.makepyfile(
        test_cases=CASES
        + """
def test_skipped():
    pytest.skip("tool missing")
"""
    )
    result = pytester.runpytest_subprocess("-p", "whisper_release.testing")
    result.assert_outcomes(passed=1, xfailed=3, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["strict mode (CI): 1 test(s) skipped, which CI treats as failure:", "  test_cases.py::test_skipped"]
    )


def test_skip_is_allowed_outside_strict_mode(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("WHISPER_RELEASE_STRICT", raising=False)
    pytester.makepyfile(test_cases="import pytest\n\ndef test_skipped():\n    pytest.skip('tool missing')\n")
    result = pytester.runpytest_subprocess("-p", "whisper_release.testing")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.OK
