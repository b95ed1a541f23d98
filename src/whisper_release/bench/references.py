"""Reference builds of whisper.cpp for the benchmark: the Dockerfile's `reference` stage built with
release.toml [bench.reference.<name>]'s flags (e.g. `-march=native`, no AVX, GGML_LLAMAFILE), their
libraries extracted into dist/reference/<name>/. Not part of the release."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from whisper_release.bench.host import cpu_lock
from whisper_release.build import baseimage
from whisper_release.build import docker as build
from whisper_release.core.console import info, quote, which
from whisper_release.core.errors import BuildError, ConfigError
from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.runtime import binding

REFERENCES = ("native", "generic")
REFERENCE_REPO = "whisper-release/reference"
REFERENCE_STAGE = "reference"  # the Dockerfile stage every [bench.reference.<name>] is built from


def reference_settings(pins: Pins, name: str) -> dict[str, str]:
    """The docker build args of reference build `name` from release.toml [bench.reference.<name>]."""
    refs = pins.bench.reference
    if name not in refs:
        raise ConfigError(
            f"release.toml has no [bench.reference.{name}]; known reference builds: {sorted(refs) or 'none'}."
        )
    r = refs[name]
    flags, variant = r.cmake_flags, r.expected_cpu_variant
    if r.release_flags_plus is not None:  # the release's own flags plus a few: only those few differ
        flags = flags or (*pins.build.cmake_flags, *r.release_flags_plus)
        variant = variant or pins.build.expected_cpu_variant
    if flags is None or variant is None:
        missing = "cmake_flags" if flags is None else "expected_cpu_variant"
        raise ConfigError(
            f"release.toml [bench.reference.{name}] lacks {missing!r} (or release_flags_plus); add it."
        )
    return {"REF_CMAKE_FLAGS": " ".join(flags), "REF_CPU_VARIANT": variant}


def reference_dir(name: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "dist" / "reference" / name


def build_reference(name: str, *, pins: Pins | None = None, out: Path | None = None) -> Path:
    """Build the Dockerfile stage `reference` with [bench.reference.<name>]'s flags from the offline
    profile's verified inputs; extract its libraries into dist/reference/<name>/ (replaced
    atomically). Holds the CPU lock."""
    pins = pins or load_pins()
    # Unknown name -> ConfigError before anything runs. The legacy builder runs every stage up to the
    # target: each reference stage needs its args (and the same ones each time, so the stages not
    # asked for come from the cache).
    settings = reference_settings(pins, name)
    root = project_root()
    out = out or reference_dir(name, root)
    offline = pins.profile("offline")  # references are built from the offline profile's inputs
    inputs = build.fetch_inputs(offline, pins)
    base_tag, base_id = baseimage.ensure_base_image(offline, pins)
    # The builder's own context, assembled by its own code, so the release stages hit the cache.
    fake_root = root / "build" / "bench" / "ctxroot"
    fake_root.mkdir(parents=True, exist_ok=True)
    for item in ("Dockerfile", ".dockerignore", "packaging"):
        link = fake_root / item
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(root / item)
    context = build.assemble_context(pins, inputs, base_tag, base_id, fake_root)
    args = {**build.build_args(pins, base_tag, [m.name for m in offline.models]), **settings}
    tag = f"{REFERENCE_REPO}:{name}"
    docker = which("docker", "Install Docker Engine (docker.io).")
    cmd = [docker, "build", "--network=none", "--force-rm", "--target", REFERENCE_STAGE, "-t", tag]
    for k, v in sorted(args.items()):
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(context))
    log = root / "build" / "logs" / f"docker-build-reference-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with cpu_lock():
        info(f"+ {quote(cmd)}  (log: {log})")
        t0 = time.monotonic()
        with log.open("w", encoding="utf-8") as f:
            rc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, DOCKER_BUILDKIT="0")
            )
        if rc.returncode != 0:
            tail = "\n".join("    " + ln for ln in log.read_text(errors="replace").splitlines()[-15:])
            raise BuildError(
                f"The reference build {name!r} failed (exit code {rc.returncode}); full log {log}:\n{tail}"
            )
        info(f"reference build {name} done in {time.monotonic() - t0:.0f} s")
    return _extract_reference(tag, out)


def _extract_reference(tag: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    cid = ""
    try:
        proc = subprocess.run(["docker", "create", tag, "/none"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"docker create {tag} failed: {proc.stderr.strip()}.")
        cid = proc.stdout.strip()
        staged = tmp / "lib"
        proc = subprocess.run(
            ["docker", "cp", "--follow-link", f"{cid}:/build/out/lib", str(staged)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BuildError(f"docker cp of /build/out/lib from {tag} failed: {proc.stderr.strip()}.")
        proc = subprocess.run(
            ["docker", "cp", f"{cid}:/build/out/toolchain.txt", str(staged / "toolchain.txt")],
            capture_output=True,
            text=True,
        )
        if not (staged / binding.LIBRARY).is_file():
            raise BuildError(f"The reference image {tag} holds no {binding.LIBRARY} in /build/out/lib.")
        old = None
        if out.exists():
            old = tmp / "previous"
            out.rename(old)
        staged.rename(out)
    finally:
        if cid:
            subprocess.run(["docker", "rm", cid], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    info(f"reference libraries in {out}")
    return out
