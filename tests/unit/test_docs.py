"""The doc-check (docs/index.md): every command in the docs names what exists; cheap ones run for real.

Commands that need built artifacts or a staged failure run in tests/integration/test_docs_errors.py.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
from doccheck import (
    BIN,
    ROOT,
    Block,
    blocks,
    fresh_tmp,
    run_shell,
    scrubbed_env,
    simple_commands,
    text_pattern,
)

ALL = blocks()
COMMAND_BLOCKS = [b for b in ALL if b.commands()]
# Programs that are not the project's own: the doc-check proves only that the name is one of these.
EXTERNAL = {
    ".",
    "aws",
    "bash",
    "cd",
    "cp",
    "curl",
    "debootstrap",
    "docker",
    "export",
    "grep",
    "journalctl",
    "sha256sum",
    "sort",
    "systemctl",
    "tar",
}
INTEGRATION_MODULE = ROOT / "tests" / "integration" / "test_docs_errors.py"


def _help(*argv: str) -> str:
    return _help_cached(tuple(argv))


@functools.cache
def _help_cached(argv: tuple[str, ...]) -> str:
    p = subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{' '.join(argv)} failed ({p.returncode}): {p.stderr[-500:]}"
    return p.stdout + p.stderr


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text))


@functools.cache
def invoke_tasks() -> set[str]:
    out = _help(str(BIN / "invoke"), "--list")
    return {m.group(1) for m in re.finditer(r"^\s+([a-z][\w-]*)", out, re.M)}


@functools.cache
def nox_sessions() -> set[str]:
    out = _help(str(BIN / "nox"), "-l")
    return set(re.findall(r"^[*-] (\S+)", out, re.M))


def _check_options(argv: list[str], known: set[str], what: str) -> list[str]:
    wrong = []
    for tok in argv:
        if tok == "--":
            break
        if tok.startswith("--"):
            opt = tok.split("=", 1)[0]
            if opt not in known:
                wrong.append(f"{what} has no option {opt} (it has {', '.join(sorted(known))})")
    return wrong


def check_command(argv: list[str]) -> list[str]:
    """Problems with one simple command: unknown task, session, sub-command, option, file or program."""
    prog, args = argv[0], argv[1:]
    if prog == "invoke":
        if not args or args[0] in ("--list", "-l", "--help", "-h"):
            return []
        task = args[0]
        if task not in invoke_tasks():
            return [f"invoke has no task {task!r} (tasks: {', '.join(sorted(invoke_tasks()))})"]
        return _check_options(
            args[1:], _options(_help(str(BIN / "invoke"), "--help", task)), f"invoke {task}"
        )
    if prog == "nox":
        problems = []
        for i, tok in enumerate(args):
            if tok == "--":
                break
            if tok in ("-s", "--session", "--sessions") and i + 1 < len(args):
                if args[i + 1] not in nox_sessions():
                    problems.append(
                        f"nox has no session {args[i + 1]!r} ({', '.join(sorted(nox_sessions()))})"
                    )
        return problems
    if prog == "whisper-release":
        top = _help(str(BIN / "whisper-release"), "--help")
        # The sub-command list of --help: "  name   summary" lines after "COMMAND".
        subs = set(re.findall(r"^    ([a-z][\w-]+)\s{2,}\S", top.split("COMMAND", 2)[-1], re.M))
        if not args or args[0] in ("--help", "-h"):
            return []
        if args[0] not in subs:
            return [f"whisper-release has no sub-command {args[0]!r} ({', '.join(sorted(subs))})"]
        sub_help = _help(str(BIN / "whisper-release"), args[0], "--help")
        return _check_options(args[1:], _options(sub_help), f"whisper-release {args[0]}")
    if prog == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        return [f"Makefile has no target {t!r}" for t in args if not t.startswith("-") and t not in targets]
    if prog in ("python", "python3") and args and args[0].endswith(".py"):
        script = ROOT / args[0]
        if not script.is_file():
            return [f"{args[0]} does not exist"]
        return _check_options(args[1:], _options(_help(str(BIN / "python"), str(script), "--help")), args[0])
    if prog == "pytest":
        return [
            f"pytest path {a} does not exist"
            for a in args
            if not a.startswith("-")
            and "/" not in a
            and a in ("verify", "tests", "benchmarks")
            and not (ROOT / a).exists()
        ]
    if "/" in prog:
        script = ROOT / prog
        if not script.is_file():
            return [f"{prog} does not exist"]
        return _check_options(args, _options(_help(str(script), "--help")), prog)
    if prog not in EXTERNAL:
        return [f"{prog!r} is neither a project command nor a known tool (tests/unit/test_docs.py EXTERNAL)"]
    return []


@pytest.mark.parametrize("block", COMMAND_BLOCKS, ids=[b.where for b in COMMAND_BLOCKS])
def test_every_documented_command_names_what_exists(block: Block):
    problems = [
        f"{block.where}: `{line}`: {p}"
        for line in block.commands()
        for argv in simple_commands(line)
        for p in check_command(argv)
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_task_option_session_and_program():
    assert check_command(["invoke", "fetch", "--profile", "offline"]) == []
    assert check_command(["invoke", "fetch", "--profiel", "offline"])
    assert check_command(["invoke", "fecth"])
    assert check_command(["nox", "-s", "lnit"])
    assert check_command(["whisper-release", "pull", "--modle", "base"])
    assert check_command(["minio/push_to_minio.sh", "--bukcet", "x"])
    assert check_command(["make", "relaese"])
    assert check_command(["whisper-relase", "--help"])


def test_markers_are_known_and_integration_scenarios_exist():
    scenarios = INTEGRATION_MODULE.read_text()
    for b in ALL:
        if not b.marker:
            continue
        assert b.lang == "sh", f"{b.where}: a doccheck marker must precede a ```sh block"
        assert b.marker in ("run", "fails", "run-after-build", "integration"), f"{b.where}: {b.marker!r}"
        if b.marker == "integration":
            assert f'"{b.marker_arg}"' in scenarios, f"{b.where}: no scenario {b.marker_arg!r} in the module"
        if b.marker == "fails":
            assert b.expected_text().strip()


def test_the_guides_exist_and_link_to_each_other():
    docs = ROOT / "docs"
    for name in ("index", "usage", "deployment", "troubleshooting", "architecture", "s3"):
        assert (docs / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme + "".join(p.read_text() for p in docs.glob("*.md"))):
        if "://" in link:
            continue
        candidates = [ROOT / link, docs / link]
        # performance.md is written by the benchmark work; its link may precede the page.
        assert any(c.exists() for c in candidates) or link.endswith("performance.md"), f"broken link {link}"


RUN = [b for b in ALL if b.marker == "run"]
FAILS = [b for b in ALL if b.marker == "fails"]


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_cheap_documented_commands_run(block: Block):
    tmp = fresh_tmp()
    for line in block.commands():
        code, out = run_shell(line, scrubbed_env(tmp))
        assert code == 0, f"{block.where}: `{line}` exited {code}:\n{out[-2000:]}"


@pytest.mark.parametrize("block", FAILS, ids=[b.where for b in FAILS])
def test_documented_errors_are_what_the_command_prints(block: Block):
    (line,) = block.commands()
    code, out = run_shell(line, scrubbed_env(fresh_tmp()))
    want = int(block.marker_arg)
    assert code == want, f"{block.where}: `{line}` exited {code}, the docs say {want}:\n{out[-2000:]}"
    assert text_pattern(block.expected_text()).search(out), (
        f"{block.where}: `{line}` printed\n{out}\nbut the docs show\n{block.expected_text()}"
    )


def test_text_pattern_wildcard_and_order():
    pat = text_pattern("error: a … b\nnext")
    assert pat.search("x\nerror: a /some/path b\nnext\n")
    assert not pat.search("error: a /some/path c\nnext\n")
    assert not Path("/nonexistent-doccheck").exists()


def test_systemd_units_and_dockerfiles_in_the_docs_name_real_options_and_files():
    """The ini and dockerfile blocks are not run (no systemd, no docker build here); their commands
    must still name the service script's real options and files that exist."""
    service = ROOT / "docs" / "examples" / "service.py"
    service_opts = _options(_help(str(BIN / "python"), str(service), "--help"))
    units = [b for b in ALL if b.lang == "ini" and "ExecStart=" in b.body]
    dockerfiles = [b for b in ALL if b.lang == "dockerfile"]
    assert units and dockerfiles, "docs/deployment.md lost its systemd unit or runtime Dockerfile"
    for b in units:
        (exec_line,) = re.findall(r"^ExecStart=(.*)$", b.body, re.M)
        argv = exec_line.split()
        assert argv[1].endswith("/service.py"), (
            f"{b.where}: ExecStart runs {argv[1]}, not the service example"
        )
        assert not _check_options(argv[2:], service_opts, "service.py"), _check_options(
            argv[2:], service_opts, ""
        )
    for b in dockerfiles:
        for src in re.findall(r"^COPY\s+(\S+)\s", b.body, re.M):
            # whisper_<model>_xeon/ is the artifact directory the reader copies next to the Dockerfile.
            assert src.startswith("whisper_") or (ROOT / src).exists(), f"{b.where}: COPY {src}: no such path"
        cmd = re.search(r"^CMD\s+(\[.*\])$", b.body, re.M)
        assert cmd, f"{b.where}: no exec-form CMD"
        argv = json.loads(cmd.group(1))
        assert not _check_options(argv, service_opts, "service.py"), f"{b.where}: CMD {argv}"
