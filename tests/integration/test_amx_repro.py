"""Issue 14, AMX: why the sapphirerapids module is not shipped, kept proven. benchmarks/amx/repro.cpp
runs ggml 1.8.5's AMX tile-config routine (amx/mmq.cpp, copied) built by the builder image's GCC with
that module's flags. The compiler drops the tile shapes, so `ldtilecfg` gets palette 1 with every tile
empty and the first `tileloadd` raises #UD (SIGILL). On an AMX host the program sees that SIGILL
itself (exit 0, CONFIRMED); elsewhere `ldtilecfg` faults first and the program prints the operand it
was given (exit 10, AFFECTED BUILD). When this test fails because the build is no longer affected
(exit 3), a newer compiler or source fixed it: measure the module and reconsider [build] cpu_variants."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from whisper_release.build import baseimage
from whisper_release.core.pins import load_pins, project_root
from whisper_release.runtime import cpu
from whisper_release.testing import require_tool

pytestmark = pytest.mark.integration

REPRO = project_root() / "benchmarks" / "amx"
# The sapphirerapids module's compile flags (release.toml [build.cpu_variant.sapphirerapids]) at -O3.
SPR_FLAGS = load_pins().build.variant("sapphirerapids").compile_flags.split(";")


def _build(tmp_path: Path, opt: str) -> Path:
    docker = require_tool("docker")
    tag = baseimage.recipe_for(load_pins().profile("offline")).tag
    out = tmp_path / f"repro{opt}"
    cmd = [docker, "run", "--rm", "--network=none", "-v", f"{REPRO}:/src:ro", "-v", f"{tmp_path}:/out",
           "-w", "/src", tag, "g++", "-std=c++17", opt, "-Wall", "-Wextra", *SPR_FLAGS, "repro.cpp",
           "-o", f"/out/{out.name}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_builder_gcc_drops_ggmls_amx_tile_config(tmp_path: Path) -> None:
    has_amx = {"amx_tile", "amx_int8"} <= cpu.cpuid_flags()
    proc = subprocess.run([_build(tmp_path, "-O3"), "512"], capture_output=True, text=True, timeout=120)
    want, verdict = (0, "CONFIRMED") if has_amx else (10, "AFFECTED BUILD")
    assert (proc.returncode, verdict in proc.stdout) == (want, True), proc.stdout + proc.stderr
    if not has_amx:  # ggml's routine hands ldtilecfg no tile rows; a full-width operand does
        assert "rows[0..7]=0,0,0,0,0,0,0,0" in proc.stdout
        assert "rows[0..7]=8,8,16,16,16,16,16,16" in proc.stdout


def test_the_control_build_keeps_the_config(tmp_path: Path) -> None:
    """At -O0 nothing is optimised away: the program must tell an unaffected build apart (exit 3)."""
    proc = subprocess.run([_build(tmp_path, "-O0"), "512"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "NOT AFFECTED" in proc.stdout
