"""The builder base image, made from Debian's packages with debootstrap (the engine can pull nothing).

The image tag encodes a hash of the recipe (suite, mirror, packages, variant, and this module's
tar normalisation), so a changed recipe gets a new tag and an unchanged one is never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from whisper_release.core.console import info, run, which
from whisper_release.core.errors import ToolError
from whisper_release.core.pins import Pins, ResolvedProfile, project_root

IMAGE_REPO = "whisper-release/builder-base"
# Bump when the way the root filesystem is cleaned or packed changes: it changes the image.
RECIPE_REVISION = 1

# Emptied before packing: caches and logs differ run to run and only bloat the image.
_PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "var/log", "tmp", "dev", "proc", "sys", "run")


@dataclass(frozen=True)
class BaseRecipe:
    suite: str
    mirror: str
    packages: tuple[str, ...]
    variant: str = "minbase"

    def as_dict(self) -> dict[str, object]:
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "variant": self.variant,
            "revision": RECIPE_REVISION,
        }

    @property
    def digest(self) -> str:
        canon = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.suite}-{self.digest[:12]}"


def recipe_for(profile: ResolvedProfile) -> BaseRecipe:
    """The base recipe of a profile: its Debian suite, archive (a dated snapshot for a profile
    that must rebuild alike later) and packages."""
    d = profile.debian
    return BaseRecipe(d.suite, d.mirror, d.packages)


def docker_ready() -> str:
    """Path of the docker CLI after checking the daemon answers, else ToolError saying what to do."""
    docker = which("docker", "Install Docker Engine (docker.io).")
    proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(
            f"The Docker daemon is not reachable ({last}); start it (service docker start) and retry."
        )
    return docker


def image_id(ref: str) -> str | None:
    """The local image id of `ref`, or None when no such image exists."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def pack_rootfs(root: Path, out_tar: Path, mtime: int) -> None:
    """Tar a root filesystem deterministically: sorted names, one mtime, numeric owners."""
    run(
        [
            "tar",
            "--create",
            "--file",
            str(out_tar),
            "--directory",
            str(root),
            "--sort=name",
            "--numeric-owner",
            f"--mtime=@{mtime}",
            "--format=gnu",
            ".",
        ]
    )


def _prune(root: Path) -> None:
    for rel in _PRUNE:
        d = root / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def ensure_base_image(profile: ResolvedProfile, pins: Pins, *, dry_run: bool = False) -> tuple[str, str]:
    """Make (or reuse) the base image of `profile`; returns (tag, image id)."""
    recipe = recipe_for(profile)
    tag = recipe.tag
    if dry_run:
        info(
            f"base image {tag}: would debootstrap {recipe.suite} from {recipe.mirror} "
            f"with {', '.join(recipe.packages)}"
        )
        return tag, image_id(tag) or ""
    docker_ready()
    existing = image_id(tag)
    if existing:
        info(f"base image {tag} exists ({existing[:19]}); skipped")
        return tag, existing
    debootstrap = which("debootstrap", "Install it: scripts/install-system-deps.sh.")
    work = project_root() / "build" / "base"
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work))
    try:
        root = tmp / "root"
        cmd = [
            debootstrap,
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(root),
            recipe.mirror,
        ]
        try:
            run(cmd)
        except ToolError:
            log = root / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
            raise ToolError(
                f"debootstrap could not build the {recipe.suite} base from {recipe.mirror} (see its output "
                "above); check that the mirror is reachable from this machine and that [build].base_packages "
                "names real packages." + "".join(f"\n    {line}" for line in tail)
            ) from None
        _prune(root)
        tar = tmp / "rootfs.tar"
        pack_rootfs(root, tar, pins.build.source_date_epoch)
        with tar.open("rb") as fh:
            info(f"+ docker import - {tag}")
            proc = subprocess.run(
                [
                    "docker",
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    f"LABEL org.whisper-release.base-recipe={recipe.digest}",
                    "--message",
                    f"debootstrap {recipe.variant} {recipe.suite} recipe {recipe.digest[:12]}",
                    "-",
                    tag,
                ],
                stdin=fh,
                capture_output=True,
                text=True,
            )
        if proc.returncode != 0:
            raise ToolError(f"docker import of the base root filesystem failed: {proc.stderr.strip()[-500:]}")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
    new_id = image_id(tag)
    if not new_id:
        raise ToolError(
            f"docker import reported success but image {tag} does not exist; check `docker images`."
        )
    info(f"base image {tag} created ({new_id[:19]})")
    return tag, new_id
