"""`invoke release`: fetch, build, verify, push — stopping at the first failure, nothing published.

Each step is the same library call its own task makes; this module only orders them. The push
happens only after the verification suite passed on exactly the files that are pushed, and the
publisher uploads the manifest last, so a failed run never leaves a visible release.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from whisper_release.build.docker import build
from whisper_release.core.console import info, quote
from whisper_release.core.errors import VerificationError
from whisper_release.core.pins import Pins, ResolvedProfile, project_root
from whisper_release.publish.push import print_report, push
from whisper_release.publish.target import publish_config


@dataclass
class StepTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())


def run_verify_suite(artifacts: Path, *, extra: list[str] | None = None) -> None:
    """Run the acceptance suite (verify/) against `artifacts` in a subprocess; raise if it fails."""
    verify_dir = str(project_root() / "verify")
    cmd = [sys.executable, "-m", "pytest", verify_dir, "-p", "no:cacheprovider", *(extra or [])]
    env = dict(os.environ, WHISPER_RELEASE_ARTIFACTS=str(artifacts.resolve()))
    info(f"+ WHISPER_RELEASE_ARTIFACTS={artifacts} {quote(cmd)}")
    rc = subprocess.run(cmd, env=env, cwd=project_root()).returncode
    if rc != 0:
        raise VerificationError(
            f"The verification suite failed on {artifacts} (pytest exit {rc}); nothing was published: "
            "read the findings above and dist/verify-report.json."
        )


def release(
    profile: ResolvedProfile,
    pins: Pins,
    *,
    out: Path = Path("dist/release_artifacts"),
    endpoint: str | None = None,
    config_file: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    force_latest: bool = False,
) -> None:

    times = StepTimes()

    t = time.monotonic()
    artifacts = build(profile, pins, dry_run=dry_run, out=out)  # fetches (and verifies) its inputs first
    times.seconds["fetch+build"] = time.monotonic() - t
    if dry_run:
        info(f"dry run: would verify {out} and push release {pins.release_version}")
        config = publish_config(config_file=config_file, endpoint=endpoint, dry_run=True)
        push(out, config, version=pins.release_version, dry_run=True) if out.is_dir() else None
        return

    t = time.monotonic()
    run_verify_suite(artifacts)
    times.seconds["verify"] = time.monotonic() - t

    t = time.monotonic()
    config = publish_config(config_file=config_file, endpoint=endpoint)
    report = push(artifacts, config, version=pins.release_version, force=force,
                  create_bucket=config.create_bucket, force_latest=force_latest)
    times.seconds["push"] = time.monotonic() - t
    info(f"release {pins.release_version} ({profile.name}) done: {times.line()}")
    print_report(report, config, artifacts)
