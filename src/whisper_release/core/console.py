"""Printing and running external commands, the one way the project does it.

Commands are printed shell-quoted before they run; tools are looked up on PATH first with a clear
message; captured stderr is shown on failure. Secrets never reach these functions' output: pass
them through the environment, never as arguments.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from whisper_release.core.errors import ToolError
from whisper_release.core.redact import redact_text


def info(msg: str) -> None:
    print(redact_text(msg), file=sys.stderr, flush=True)


def which(tool: str, hint: str = "") -> str:
    """Absolute path of `tool` on PATH, else ToolError saying how to get it."""
    path = shutil.which(tool)
    if path is None:
        extra = f" {hint}" if hint else ""
        raise ToolError(f"Required tool {tool!r} is not on PATH.{extra}")
    return path


def quote(cmd: Sequence[str]) -> str:
    return shlex.join([str(c) for c in cmd])


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    echo: bool = True,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command (printed first). On failure raise ToolError with the last stderr lines."""
    cmd = [str(c) for c in cmd]
    which(cmd[0]) if os.sep not in cmd[0] else None
    if echo:
        info(f"+ {quote(cmd)}")
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=full_env,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        tail = ""
        if capture and proc.stderr:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
            tail = "\n" + "\n".join("    " + line for line in lines)
        raise ToolError(f"Command failed with exit code {proc.returncode}: {quote(cmd)}{tail}")
    return proc
