"""The hermetic docker build: assemble a context, build with --network=none, extract the artifacts.

Flow: fetch_profile (proven inputs) -> base image (debootstrap, baseimage.py) -> context dir
build/context/<profile>/ (hardlinks of the verified source tree and f16 models, Dockerfile,
packaging/, build.json) -> `docker build` (legacy builder, streamed one line per step) ->
`docker create` + `docker cp` into a temp dir -> checks -> atomic swap into dist/release_artifacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_release.build import baseimage
from whisper_release.core.console import info, quote
from whisper_release.core.errors import BuildError, ConfigError, ReleaseError
from whisper_release.core.pins import GithubSource, Pins, ResolvedProfile, load_pins, project_root
from whisper_release.inputs.fetch import fetch_package_file, fetch_profile, print_report
from whisper_release.layout import artifacts

ARTIFACTS_REPO = "whisper-release/artifacts"
# The Dockerfile stage holding only /release_artifacts; later stages (benchmark references) are not built.
OUTPUT_STAGE = "output"
# Files of the repository that enter the build context, relative to the project root.
_PACKAGING = ("compile.sh", "quantize.sh", "organize.sh", "README.template.md")
# Run by the organizer with the image's python3.
_LIBRARY_SCRIPTS = ("artifacts.py", "readme.py", "sbom.py", "libraries.py")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_TAIL_LINES = 25
_BUILT = re.compile(r"^Successfully built ([0-9a-f]{12,64})$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR = re.compile(r"\berror\b|No such file|not found", re.I)


@dataclass(frozen=True)
class BuildInputs:
    """Proven inputs of one profile: what fetch_profile returns, reduced to what the build needs."""

    profile: ResolvedProfile
    source_dir: Path
    models: Mapping[str, Path]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    # Verified package files the organizer writes the SBOM with: the [[sbom.tool]] wheels and the
    # [assets] sdist (the weights' licence text), by file name.
    sbom_files: Mapping[str, Path] = field(default_factory=dict)


def fetch_inputs(profile: ResolvedProfile, pins: Pins) -> BuildInputs:
    r = fetch_profile(profile, pins)
    print_report(r, file=sys.stderr)  # a build (and a release) shows which proven inputs it used
    sbom_files = {
        pkg.filename: fetch_package_file(pins, pkg) for pkg in (*pins.sbom_tools, pins.assets.package_file)
    }
    return BuildInputs(
        profile, Path(r.source_dir), {k: Path(v) for k, v in r.models.items()}, r.provenance(), sbom_files
    )


def artifact_tag(profile: ResolvedProfile) -> str:
    return f"{ARTIFACTS_REPO}:{profile.name}"


def quantize_jobs(models: Sequence[str], quantize: Sequence[str]) -> str:
    """QUANTIZE_JOBS for packaging/quantize.sh: `<f16 input>:<type>:<output>` per model and type, the
    output names from the layout (their one owner), so the script composes no file name itself."""
    return " ".join(
        f"{model}.bin:{q}:{artifacts.model_file_name(model, q)}" for model in sorted(models) for q in quantize
    )


def build_args(pins: Pins, base_tag: str, models: Sequence[str]) -> dict[str, str]:
    """Docker build args, every value from release.toml (no secrets, no literals in the Dockerfile)."""
    b = pins.build
    return {
        "BASE_IMAGE": base_tag,
        "CMAKE_FLAGS": " ".join(b.effective_cmake_flags),
        "EXPECTED_CPU_VARIANT": b.expected_cpu_variant,
        # `<variant>=<flags cmake must print>` per shipped CPU module; one entry: the single-ISA build.
        "CPU_VARIANTS": " ".join(f"{v.name}={v.compile_flags}" for v in b.shipped_variants()),
        "WHISPER_BUILD_COMMIT": pins.source.commit,
        "WHISPER_BUILD_NUMBER": "0",
        "SOURCE_DATE_EPOCH": str(b.source_date_epoch),
        "QUANTIZE_JOBS": quantize_jobs(models, pins.quantizations),
        "JOBS": "2",
    }


def build_description(
    pins: Pins, inputs: BuildInputs, base_tag: str, base_id: str, model_digests: Mapping[str, str]
) -> dict[str, Any]:
    """build.json: what the organizer stage writes into the README and the manifest."""
    b = pins.build
    src = pins.source
    profile = inputs.profile
    provider = profile.source
    return {
        "profile": profile.name,
        "release_version": pins.release_version,
        "quantize": list(pins.quantizations),
        "cmake_flags": list(b.effective_cmake_flags),
        "required_cpu_flags": list(b.required_cpu_flags),
        "cpu_variants": [
            {"name": v.name, "cpu_flags": list(v.cpu_flags)} for v in b.shipped_variants()
        ],
        "source_date_epoch": b.source_date_epoch,
        "source": {
            "version": src.version,
            "commit": src.commit,
            "tree": src.tree,
            "provider": provider.name,
            "uri": (
                provider.url
                if isinstance(provider, GithubSource)
                else f"pypi:{provider.package}=={provider.version}"
            ),
        },
        "models": {
            name: {
                "sha256": model_digests[name],
                "size": inputs.models[name].stat().st_size,
                "provider": pins.model(name).provider,
                "format": "ggml-f16",
            }
            for name in sorted(inputs.models)
        },
        "base_image": {
            "tag": base_tag,
            "id": base_id,
            "recipe": baseimage.recipe_for(profile).as_dict(),
        },
        "inputs": stable_provenance(inputs.provenance),
        "sbom": sbom_description(pins, inputs),
    }


def sbom_description(pins: Pins, inputs: BuildInputs) -> dict[str, Any]:
    """build.json's `sbom`: the pins the organizer's SBOM needs beyond the build facts."""
    src, assets = pins.source, pins.assets
    missing = [] if assets.license and assets.license_file else ["[assets] license and license_file"]
    missing += [f"[models.{n}] license" for n in sorted(inputs.models) if not pins.model(n).license]
    if missing or not pins.sbom.tool or not pins.sbom.debian:
        raise ConfigError(
            f"release.toml lacks what the SBOM needs ({', '.join(missing) or '[sbom] tool or debian'}); "
            "restore them from git."
        )
    return {
        "source_repository": src.repository,
        "source_license": src.license,
        "model_licenses": {n: pins.model(n).license for n in sorted(inputs.models)},
        "assets": {
            "package": assets.package, "version": assets.version, "filename": assets.filename,
            "sha256": assets.sha256, "license": assets.license, "license_file": assets.license_file,
        },
        "debian": dict(pins.sbom.debian),
        "tools": [
            {"name": t.name, "version": t.version, "filename": t.filename, "sha256": t.sha256}
            for t in pins.sbom_tools
        ],
    }


# Keys that describe one run rather than the inputs (whether a file came from the cache or the
# network); kept out so the manifest of the same inputs is the same bytes on every machine.
_RUN_KEYS = frozenset({"status", "path"})


def stable_provenance(obj: Any) -> Any:
    """The fetch provenance without run-dependent keys, at any depth."""
    if isinstance(obj, Mapping):
        return {k: stable_provenance(v) for k, v in obj.items() if k not in _RUN_KEYS}
    if isinstance(obj, list | tuple):
        return [stable_provenance(v) for v in obj]
    return obj


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: a copy costs space, not correctness
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in sorted(filenames):
            s = Path(dirpath) / f
            if s.is_symlink():
                os.symlink(os.readlink(s), dst / rel / f)
            else:
                _link_or_copy(s, dst / rel / f)


def assemble_context(
    pins: Pins, inputs: BuildInputs, base_tag: str, base_id: str, root: Path | None = None
) -> Path:
    """build/context/<profile>/ holding exactly what the Dockerfile reads; built aside, then swapped in."""
    root = root or project_root()
    name = inputs.profile.name
    missing = [n for n in inputs.profile.model_names if n not in inputs.models]
    if missing:
        raise BuildError(f"Inputs of profile {name!r} lack models {missing}; run `invoke fetch` first.")
    if not (inputs.source_dir / "CMakeLists.txt").is_file():
        raise BuildError(
            f"{inputs.source_dir} holds no whisper.cpp source tree (no CMakeLists.txt); run `invoke fetch`."
        )
    parent = root / "build" / "context"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
    try:
        shutil.copy2(root / "Dockerfile", tmp / "Dockerfile")
        shutil.copy2(root / ".dockerignore", tmp / ".dockerignore")
        (tmp / "packaging").mkdir()
        for name in _PACKAGING:
            shutil.copy2(root / "packaging" / name, tmp / "packaging" / name)
        here = Path(artifacts.__file__).parent  # the layout package: the organizer runs its files
        for name in _LIBRARY_SCRIPTS:
            shutil.copy2(here / name, tmp / "packaging" / name)
        _link_tree(inputs.source_dir, tmp / "source")
        (tmp / "models").mkdir()
        digests = {}
        for name in sorted(inputs.models):
            _link_or_copy(inputs.models[name], tmp / "models" / f"{name}.bin")
            digests[name] = artifacts.sha256_file(inputs.models[name])
        (tmp / "sbom" / "wheels").mkdir(parents=True)
        for filename, path in sorted(inputs.sbom_files.items()):
            where = "wheels" if filename.endswith(".whl") else "."
            _link_or_copy(path, tmp / "sbom" / where / filename)
        desc = build_description(pins, inputs, base_tag, base_id, digests)
        (tmp / "build.json").write_text(artifacts.canonical_json(desc), encoding="utf-8")
        old = None
        if final.exists():
            old = parent / f".{name}-old-{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class BuildProgress:
    """The legacy builder's output as one line per step and per stage, each with its duration.

    Keeps the current step's last lines and its error lines (often far above the last ones) for
    the message of a failed build.
    """

    def __init__(
        self, emit: Callable[[str], None] = info, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.emit, self.clock = emit, clock
        self.step = ""
        self.stage = ""
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.errors: deque[str] = deque(maxlen=5)
        self.started = self.step_start = self.stage_start = clock()
        self.image_id = ""

    def feed(self, raw: str) -> None:
        line = _ANSI.sub("", raw.rstrip("\n"))
        m = _STEP.match(line)
        if m:
            self._end_step()
            instruction = m.group(3)
            if instruction.upper().startswith("FROM "):
                self._end_stage()
                words = instruction.split()
                self.stage = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
                self.stage_start = self.clock()
            self.step, self.step_start = f"[{m.group(1)}/{m.group(2)}] {instruction[:90]}", self.clock()
            self.tail.clear()
            self.errors.clear()
            return
        built = _BUILT.match(line)
        if built:
            self.image_id = built.group(1)
        if line.strip() == "---> Using cache" and self.step:
            self.step += "  (cached)"
        elif _ERROR.search(line):
            self.errors.append(line)
        self.tail.append(line)

    def _end_step(self) -> None:
        if self.step:
            self.emit(f"  {self.step}  ({self.clock() - self.step_start:.1f} s)")

    def _end_stage(self) -> None:
        if self.stage:
            self.emit(f"stage {self.stage}: {self.clock() - self.stage_start:.1f} s")

    def last_lines(self) -> list[str]:
        return [ln for ln in self.errors if ln not in self.tail] + list(self.tail)

    def finish(self) -> None:
        self._end_step()
        self._end_stage()
        self.emit(f"docker build done in {self.clock() - self.started:.1f} s")


def docker_build(
    context: Path,
    tag: str,
    args: Mapping[str, str],
    *,
    target: str | None = None,
    no_cache: bool = False,
    log_path: Path | None = None,
) -> str:
    """`docker build --network=none`, streamed one line per step and stage; returns the image id.

    Callers use the id, not the tag: a concurrent build of the same tag cannot swap the image.
    """
    docker = baseimage.docker_ready()
    cmd = [docker, "build", "--network=none", "--force-rm", "-t", tag, "-f", str(context / "Dockerfile")]
    if target:
        # The legacy builder builds every stage up to the target, and all of them without one.
        cmd += ["--target", target]
    if no_cache:
        cmd.append("--no-cache")
    for k, v in sorted(args.items()):
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(context))
    info(f"+ {quote(cmd)}")
    # The legacy builder prints "Step N/M"; BuildKit would not, so it is switched off explicitly.
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    progress = BuildProgress()
    log = log_path.open("w", encoding="utf-8", buffering=1) if log_path else None
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if log:
                log.write(line)
            progress.feed(line)
        rc = proc.wait()
    finally:
        if log:
            log.close()
    if rc != 0:
        where = f" at step {progress.step}" if progress.step else ""
        logs = f"; full log: {log_path}" if log_path else ""
        last = "\n".join("    " + ln for ln in progress.last_lines())
        raise BuildError(f"docker build failed{where} (exit code {rc}){logs}; its last lines:\n{last}")
    progress.finish()
    if not progress.image_id:
        raise BuildError(f"docker build of {tag} succeeded but printed no image id; see {log_path}.")
    return progress.image_id


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    info(f"+ {quote(['docker', *args])}")
    return subprocess.run(["docker", *args], capture_output=True, text=True)


def extract(
    image: str,
    out: Path,
    models: list[str],
    quantize: Sequence[str],
    epoch: int,
    cpu_variants: Sequence[str] = (artifacts.CPU_FLOOR,),
) -> Path:
    """Copy /release_artifacts out of the image (create + cp), check it, then swap it into `out`."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".release_artifacts-", dir=out.parent))
    cid = ""
    try:
        # The output stage is FROM scratch: no command; create needs one but never runs it.
        proc = _docker("create", image, "/none")
        if proc.returncode != 0:
            raise BuildError(
                f"docker create {image} failed: {proc.stderr.strip()}; was the build successful?"
            )
        cid = proc.stdout.strip()
        proc = _docker("cp", "--follow-link", f"{cid}:/release_artifacts", str(tmp / "release_artifacts"))
        if proc.returncode != 0:
            raise BuildError(f"docker cp from image {image} failed: {proc.stderr.strip()}.")
        staged = tmp / "release_artifacts"
        # docker cp keeps the image's modes; normalising again makes the host copy independent of it.
        artifacts.normalise(staged, epoch)
        findings = artifacts.check_tree(staged, models, quantize, cpu_variants)
        if findings:
            raise BuildError(
                f"The extracted artifacts in {staged} break the layout contract: " + "; ".join(findings)
            )
        old = None
        if out.exists():
            old = tmp / "previous"
            out.rename(old)
        try:
            staged.rename(out)
        except OSError:
            if old is not None:  # put the previous release back rather than lose it with tmp
                old.rename(out)
            raise
    finally:
        if cid:
            _docker("rm", cid)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build(
    profile: ResolvedProfile,
    pins: Pins,
    *,
    dry_run: bool = False,
    no_cache: bool = False,
    out: Path = Path("dist/release_artifacts"),
    inputs: BuildInputs | None = None,
) -> Path:
    """Build the artifacts of `profile` and extract them into `out` (replaced atomically)."""
    base_tag = baseimage.recipe_for(profile).tag
    args = build_args(pins, base_tag, [m.name for m in profile.models])
    if dry_run:
        info(f"would make or reuse base image {base_tag}")
        info(
            f"would fetch {profile.source.name} source and models {', '.join(profile.model_names)}, "
            f"assemble build/context/{profile.name}/ and run docker build --network=none with:"
        )
        for k, v in sorted(args.items()):
            info(f"  --build-arg {k}={v}")
        info(f"would extract /release_artifacts of {artifact_tag(profile)} into {out}")
        return out
    inputs = inputs or fetch_inputs(profile, pins)
    base_tag, base_id = baseimage.ensure_base_image(profile, pins)
    root = project_root()
    with _profile_lock(root, profile.name):
        context = assemble_context(pins, inputs, base_tag, base_id, root)
        logs = root / "build" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        tag = artifact_tag(profile)
        image = docker_build(
            context,
            tag,
            args,
            target=OUTPUT_STAGE,
            no_cache=no_cache,
            log_path=logs / f"docker-build-{profile.name}.log",
        )
        out = out if out.is_absolute() else root / out
        result = extract(
            image,
            out,
            sorted(inputs.models),
            pins.quantizations,
            pins.build.source_date_epoch,
            pins.build.cpu_variants,
        )
    info(f"artifacts in {result}")
    return result


@contextlib.contextmanager
def _profile_lock(root: Path, profile: str) -> Iterator[None]:
    """One build per profile at a time: a second one would replace the context the first is sending."""
    lock_dir = root / "build" / "context"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f".{profile}.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"another build of profile {profile!r} is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def read_manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / artifacts.MANIFEST).read_text(encoding="utf-8"))


# ---- reproducibility ---------------------------------------------------------------------------
def artifact_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): artifacts.sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def compare_trees(a: Path, b: Path, report_dir: Path | None = None) -> list[str]:
    """Relative paths whose bytes differ (or exist on one side only); diffoscope reports when installed."""
    da, db = artifact_digests(a), artifact_digests(b)
    differ = sorted(n for n in set(da) | set(db) if da.get(n) != db.get(n))
    diffoscope = shutil.which("diffoscope")
    if differ and diffoscope and report_dir:
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in differ:
            if name in da and name in db:
                report = report_dir / (name.replace("/", "__") + ".txt")
                subprocess.run(
                    [diffoscope, "--text", str(report), str(a / name), str(b / name)], capture_output=True
                )
    return differ


def reproducibility(profile: ResolvedProfile, pins: Pins) -> Path:
    """Two --no-cache builds of the same fetched inputs; BuildError naming every file that differs."""
    inputs = fetch_inputs(profile, pins)
    root = project_root() / "build" / "repro" / profile.name
    a = build(profile, pins, no_cache=True, out=root / "a", inputs=inputs)
    b = build(profile, pins, no_cache=True, out=root / "b", inputs=inputs)
    differ = compare_trees(a, b, root / "diffoscope")
    if differ:
        where = (
            f"; diffoscope reports in {root / 'diffoscope'}"
            if shutil.which("diffoscope")
            else " (install diffoscope for a report of each difference)"
        )
        raise BuildError(
            f"Two clean builds of profile {profile.name!r} differ in {len(differ)} file(s): "
            f"{', '.join(differ)}{where}."
        )
    info(f"reproducible: {len(artifact_digests(a))} files identical across two --no-cache builds ({a}, {b})")
    return a


def main(argv: list[str] | None = None) -> int:
    """`python -m whisper_release.build.docker reproducibility [profile]` (the nox session's entry)."""


    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "reproducibility":
        print("usage: python -m whisper_release.build.docker reproducibility [profile]", file=sys.stderr)
        return 2
    try:
        pins = load_pins()
        reproducibility(pins.profile(args[1] if len(args) > 1 else "offline"), pins)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
