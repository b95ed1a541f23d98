"""Reading the commands out of the docs (the convention is in docs/index.md), and running them.

Shared by tests/unit/test_docs.py (static checks, cheap commands, error texts) and
tests/integration/test_docs_errors.py (what needs built artifacts or a staged failure).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "minio" / "README.md"]

# Lines of unlabelled blocks starting with these are commands too (older pages use bare fences).
PROJECT_PREFIXES = ("invoke ", "nox ", "whisper-release ", "make ", "minio/push_to_minio.sh", "python docs/")

MARKER = re.compile(r"<!--\s*doccheck:\s*([\w-]+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```([\w-]*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    marker: str = ""  # run, fails, run-after-build, integration; "" for none
    marker_arg: str = ""
    following: Block | None = None  # the next block of the file (the expected text of `fails`)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """Command lines: every line of a sh block, project commands of an unlabelled one."""
        out: list[str] = []
        pending = ""
        for raw in self.body.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line.startswith("#"):
                continue
            if self.lang == "sh" or (self.lang == "" and line.startswith(PROJECT_PREFIXES)):
                out.append(line)
        return out

    def expected_text(self) -> str:
        nxt = self.following
        assert nxt is not None and nxt.lang == "text", (
            f"{self.where}: a `{self.marker}` block must be followed by a ```text block with the output"
        )
        return nxt.body


def blocks(paths: list[Path] | None = None) -> list[Block]:
    found: list[Block] = []
    for path in paths or DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        file_blocks: list[Block] = []
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            i += 1
            marker = marker_arg = ""
            j = start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            mm = MARKER.fullmatch(lines[j].strip()) if j >= 0 else None
            if mm:
                marker, marker_arg = mm.group(1), mm.group(2)
            file_blocks.append(Block(path, start + 1, m.group(1), "\n".join(body) + "\n", marker, marker_arg))
        for a, b in zip(file_blocks, file_blocks[1:], strict=False):
            a.following = b
        found += file_blocks
    return found


def text_pattern(expected: str) -> re.Pattern[str]:
    """Each expected line, `…` matching anything, must appear in order in the output."""
    parts = [".*".join(re.escape(p) for p in line.split("…")) for line in expected.strip().splitlines()]
    return re.compile(r"[\s\S]*?".join(parts))


def scrubbed_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """No store settings from the caller, a private cache and store, the venv's tools first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_")) and k not in ("DOCKER_HOST",)
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        WHISPER_RELEASE_CACHE=str(tmp / "cache"),
        WHISPER_RELEASE_STORE=str(tmp / "store"),
        TMPDIR=str(tmp),
    )
    env.update(extra or {})
    return env


def run_shell(command: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 180) -> tuple[int, str]:
    """Run one documented line with bash, as a reader would paste it; (exit code, stdout + stderr)."""
    p = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return p.returncode, p.stdout + p.stderr


def fresh_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="doccheck-"))


def simple_commands(line: str) -> list[list[str]]:
    """Split a documented line into simple commands (argv lists).

    `a && b`, `a; b`, `a | b` and `$(...)` separate commands; `cmd --x | --y` (the docs' notation
    for alternatives) and `[--opt]` (optional) stay options of one command; VAR=value prefixes go.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands: list[list[str]] = [[]]
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "|" and nxt.startswith("-"):
            continue
        if tok in ("&&", "||", ";", "|", "(", ")", "$"):
            commands.append([])
            continue
        tok = tok.strip("[]")
        if tok.endswith("=$"):
            commands.append([])
            continue
        if tok:
            commands[-1].append(tok)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out
