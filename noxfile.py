"""nox sessions: thin wrappers; expensive ones are default=False. `nox -l` lists them."""

from __future__ import annotations

import nox

nox.options.sessions = ["unit"]
nox.options.reuse_existing_virtualenvs = True


# Exact versions of the WER stack, so the verify gates cannot drift with a new release of it.
CONSTRAINTS = ("-c", "constraints/wer.txt")


def _install(session: nox.Session, extra: str = "dev") -> None:
    # dev, not just test: the doc-check and the workflow test run invoke and nox as documented.
    session.install(*CONSTRAINTS, "-e", f".[{extra}]")


@nox.session
def unit(session: nox.Session) -> None:
    """Unit tests of the tooling (fast, no docker, no network)."""
    _install(session)
    session.run("pytest", "tests/unit", *session.posargs)


# What `lint` checks; mypy runs per tree because tests/ and verify/ each have a conftest module.
# benchmarks/ gets ruff only until its conftest is annotated (then add `mypy benchmarks`).
LINT_PATHS = ["src", "tests", "verify", "benchmarks", "docs/examples", "tasks.py", "noxfile.py"]


def _lint(session: nox.Session) -> None:
    session.run("ruff", "check", *LINT_PATHS)
    session.run("lint-imports")  # the layers of pyproject.toml [tool.importlinter]
    session.run("mypy", "src", "tasks.py", "noxfile.py")
    session.run("mypy", "tests")
    session.run("mypy", "verify")
    session.run("mypy", "docs/examples")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy and import-linter (the layers in pyproject.toml) over the library, tests, entry points."""
    _install(session)
    _lint(session)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Doc-check: every command and error text of docs/ and README.md, run or resolved.

    The fast commands run for real, every other one must name a real task, session, option or script
    (tests/unit/test_docs.py); then the documented error texts that need built artifacts
    (tests/integration/test_docs_errors.py)."""
    _install(session)
    session.run("pytest", "tests/unit/test_docs.py", "-p", "no:cacheprovider")
    session.run(
        "pytest", "tests/integration/test_docs_errors.py", "-p", "no:cacheprovider",
        env={"WHISPER_RELEASE_INTEGRATION": "1"},
    )


@nox.session(default=False)
def integration(session: nox.Session) -> None:
    """Integration tests: real downloads from the package index, docker build, S3 server."""
    _install(session)
    session.run("pytest", "tests/integration", *session.posargs, env={"WHISPER_RELEASE_INTEGRATION": "1"})


@nox.session(default=False)
def reproducibility(session: nox.Session) -> None:
    """Two --no-cache docker builds of the offline profile; every artifact's sha256 must match."""
    _install(session)
    session.run(
        "python", "-m", "whisper_release.build.docker", "reproducibility", *(session.posargs or ["offline"])
    )


@nox.session(default=False)
def verify(session: nox.Session) -> None:
    """Acceptance suite on the built artifacts (dist/release_artifacts, or --artifacts DIR).

    ISA audit, clean ctypes load, artifact.json, integrity and numerics of each quantized file, WER
    gates; prints a summary and writes dist/verify-report.json."""
    _install(session)
    session.run("pytest", "verify", "-p", "no:cacheprovider", *session.posargs)


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """The offline docker build into dist/release_artifacts (fetches and verifies inputs first)."""
    _install(session)
    session.run("invoke", "build", *(session.posargs or ["--profile", "offline"]))


@nox.session(default=False)
def ci(session: nox.Session) -> None:
    """Everything CI runs (.ci/run -> make test): lint, unit, offline build, verify, integration.

    Lint and types, unit tests, the real offline build, the verification suite on what was built,
    then the integration tests (S3, shell publisher, consumer, corruption). Any skip fails the run
    when CI is set (whisper_release.testing)."""
    _install(session)
    _lint(session)
    session.run("pytest", "tests/unit", "-p", "no:cacheprovider")
    session.run("invoke", "build", "--profile", "offline")
    session.run("pytest", "verify", "-p", "no:cacheprovider")
    session.run(
        "pytest", "tests/integration", "-p", "no:cacheprovider", env={"WHISPER_RELEASE_INTEGRATION": "1"}
    )


@nox.session(default=False)
def benchmark(session: nox.Session) -> None:
    """Benchmarks of the artifacts vs reference builds and peer engines (pytest-benchmark, saved JSON).

    The native and generic reference builds, faster-whisper and pywhispercpp; holds the CPU lock and
    refuses to run beside a build.
    Writes dist/bench/ (results JSON, report.md, PNG charts). Posargs go to pytest (e.g. --bench-quick);
    WHISPER_RELEASE_BENCH_GATE=15 fails on a >15% median regression vs the last saved run."""
    _install(session, "bench")
    session.run("python", "-m", "whisper_release.bench", "run", *session.posargs)
