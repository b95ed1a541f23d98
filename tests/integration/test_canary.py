"""Issue 13 item 11: no credential reaches anything the tools print or leave behind.

A copy of the project in a temp dir runs, as a user would, `invoke fetch` (warm cache, and once
cold against a loopback index that answers 404), `invoke build` (a real docker build: the layer
cache makes it re-run only what changed), a quick part of the verification suite, `invoke push`,
`whisper-release pull` and the shell publisher, with a canary in every credential variable
(AWS_*, MINIO_*, the index URL's token) and as the embedded store's own keys. Then everything is
scanned for the canaries: all output, every file under dist/, build/, .store/ and the pulled
directory, and the images: `docker save` of the artifacts image, and the config and history of
every intermediate image the build log names (the only way a value reaches a layer is a build
argument, the environment or a context file, and all three are covered).

The only files allowed to hold a canary are the store's key files, which must be mode 0600.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fetch_support import Server, http_server  # noqa: F401  (fixture)
from test_publish_support import make_artifacts

from whisper_release.core.pins import load_pins, project_root
from whisper_release.testing import require_tool, unavailable

pytestmark = pytest.mark.integration
ROOT = project_root()
BIN = Path(sys.executable).parent
# What a user's checkout holds that the commands read.
PROJECT = ("src", "packaging", "minio", "verify", "Dockerfile", ".dockerignore", "release.toml", "tasks.py",
           "pyproject.toml")
# The embedded store's secret files (0600 by design); nothing else may hold a canary.
KEY_FILES = (".store/credentials.json", ".store/run/s3.json")
CHUNK = 8 << 20


class Canaries:
    def __init__(self) -> None:
        tag = secrets.token_hex(6)
        self.access_key = f"CANARYAK{tag.upper()}"
        self.secret_key = f"canary-secret-{tag}"
        self.session_token = f"canary-session-{tag}"
        self.index_token = f"canary-index-{tag}"

    @property
    def needles(self) -> list[bytes]:
        return [v.encode() for v in (self.access_key, self.secret_key, self.session_token, self.index_token)]


@pytest.fixture
def index_404(http_server: Server) -> int:  # noqa: F811
    """The port of a loopback package index that answers 404 to everything (no routes)."""
    return http_server.port


def _copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    for name in PROJECT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


class Run:
    """Commands run in the temp project with the canary environment; their output is kept."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.output = root, env, []  # type: ignore[var-annotated]

    def __call__(self, *argv: str | Path, ok: bool = True, timeout: float = 900,
                 **extra_env: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **extra_env)
        p = subprocess.run([str(a) for a in argv], cwd=self.root, env=env, capture_output=True, text=True,
                           timeout=timeout)
        self.output.append((" ".join(map(str, argv)), p.stdout + p.stderr))
        if ok:
            assert p.returncode == 0, f"{argv} exited {p.returncode}:\n{(p.stdout + p.stderr)[-3000:]}"
        return p


def _hits(data_source: Iterator[bytes], needles: list[bytes]) -> set[bytes]:
    """Needles found in a byte stream (chunks overlap so a needle across a boundary is seen)."""
    found: set[bytes] = set()
    keep = max(len(n) for n in needles) - 1
    tail = b""
    for chunk in data_source:
        buf = tail + chunk
        found.update(n for n in needles if n in buf)
        tail = buf[-keep:]
    return found


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _scan_tree(root: Path, needles: list[bytes], allowed: set[Path]) -> dict[str, set[bytes]]:
    leaks: dict[str, set[bytes]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path in allowed:
            continue
        found = _hits(_file_chunks(path), needles)
        if found:
            leaks[str(path.relative_to(root.parent))] = found
    return leaks


def _image_ids(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    ids = re.findall(r"^ ---> ([0-9a-f]{12})$", text, re.M)
    ids += re.findall(r"^Successfully built ([0-9a-f]{12,64})$", text, re.M)
    return list(dict.fromkeys(ids))


def test_no_credential_reaches_output_files_or_image_layers(tmp_path: Path, index_404: int) -> None:
    docker = require_tool("docker", "the canary build is a real docker build")
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        unavailable("the Docker daemon is not reachable", "; CI runs the docker build")
    c = Canaries()
    root = tmp_path / "project"
    root.mkdir()
    _copy_project(root)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "WHISPER_RELEASE_"))}
    for keep in ("WHISPER_RELEASE_CACHE",):  # the shared fetch cache stays warm
        if os.environ.get(keep):
            env[keep] = os.environ[keep]
    index = f"http://__token__:{c.index_token}@127.0.0.1:{index_404}/simple"
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root / "src"),
        WHISPER_RELEASE_INDEX_URL=index,
        PIP_INDEX_URL=index,
        AWS_ACCESS_KEY_ID=c.access_key,
        AWS_SECRET_ACCESS_KEY=c.secret_key,
        MINIO_ACCESS_KEY=c.access_key,
        MINIO_SECRET_KEY=c.secret_key,
        MINIO_ROOT_USER=c.access_key,
        MINIO_ROOT_PASSWORD=c.secret_key,
        # SeaweedFS takes any session token for one it issued itself and refuses the request, so the
        # session token rides along everywhere except where the store is contacted.
        AWS_SESSION_TOKEN=c.session_token,
        WHISPER_RELEASE_RETRIES="0",
    )
    run = Run(root, env)
    invoke = BIN / "invoke"

    # Fetch: warm (no request at all), then cold against the loopback index, which refuses.
    run(invoke, "fetch", "--profile", "offline")
    cold = run(invoke, "fetch", "--profile", "offline", ok=False,
               WHISPER_RELEASE_CACHE=str(tmp_path / "cold"))
    assert cold.returncode == 3 and "http://***@127.0.0.1" in cold.stderr, cold.stderr[-2000:]

    run(invoke, "build", "--profile", "offline", timeout=1800)
    artifacts = root / "dist" / "release_artifacts"
    assert (artifacts / "manifest.json").is_file()
    run(BIN / "python", "-m", "pytest", "verify", "-p", "no:cacheprovider", "-q", "--artifacts", artifacts,
        "-k", "files_sha256sums or isa_audit or library_loads")

    # The embedded store of this project, with the canary as its own keys, is where push goes.
    store = root / ".store"
    store.mkdir()
    keys = {"access_key": c.access_key, "secret_key": c.secret_key}
    (store / "credentials.json").write_text(json.dumps(keys))
    (store / "credentials.json").chmod(0o600)
    store_env = {k: v for k, v in env.items() if k != "AWS_SESSION_TOKEN"}
    run.env = store_env
    try:
        run(invoke, "store", "--start")
        state = json.loads((store / "run" / "state.json").read_text())
        endpoint = f"http://127.0.0.1:{state['ports']['s3.port']}"
        # The consumer reads no release.toml: it names the bucket the publisher used.
        run.env = dict(store_env, AWS_ENDPOINT_URL=endpoint, MINIO_ENDPOINT=endpoint.removeprefix("http://"),
                       MINIO_SECURE="false", WHISPER_RELEASE_BUCKET=load_pins().publish.bucket,
                       WHISPER_RELEASE_PREFIX=load_pins().publish.prefix)
        run(invoke, "push", "--create-bucket")
        run(BIN / "whisper-release", "pull", "--model", "tiny.en", "--dest", root / "pulled", "--no-progress")
        small = make_artifacts(tmp_path / "small", models=("base",), big=100_000)
        run("bash", root / "minio" / "push_to_minio.sh", "--client", "aws", "--version", "canary-sh", small)
        # A refused login prints what it knows about the key: still no canary.
        bad = run(invoke, "push", ok=False, AWS_SECRET_ACCESS_KEY=c.secret_key + "x")
        assert bad.returncode == 8, bad.stderr[-2000:]
    finally:
        run.env = store_env
        run(invoke, "store", "--stop", ok=False)

    needles = c.needles
    leaks: dict[str, set[bytes]] = {}
    for argv, out in run.output:
        found = _hits(iter([out.encode()]), needles)
        if found:
            leaks[f"output of {argv}"] = found
    allowed = {root / k for k in KEY_FILES}
    for key_file in allowed:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, f"{key_file} is not mode 0600"
        # The scanner's positive control: it does find the keys where they belong.
        assert c.secret_key.encode() in _hits(_file_chunks(key_file), needles), key_file
    for sub in ("dist", "build", ".store", "pulled"):
        leaks.update(_scan_tree(root / sub, needles, allowed))
    leaks.update(_scan_tree(tmp_path / "cold", needles, set()))

    ids = _image_ids(root / "build" / "logs" / "docker-build-offline.log")
    assert ids, "the build log names no image"
    for image in ids:
        meta = subprocess.run([docker, "image", "inspect", image], capture_output=True).stdout
        meta += subprocess.run([docker, "history", "--no-trunc", image], capture_output=True).stdout
        found = _hits(iter([meta]), needles)
        if found:
            leaks[f"docker image {image} (config/history)"] = found
    final = ids[-1]
    with subprocess.Popen([docker, "save", final], stdout=subprocess.PIPE) as saver:
        assert saver.stdout is not None
        found = _hits(iter(lambda: saver.stdout.read(CHUNK), b""), needles)  # type: ignore[union-attr]
    assert saver.returncode == 0, f"docker save {final} failed"
    if found:
        leaks[f"docker save {final}"] = found

    named = dict(zip(needles, ("access key", "secret key", "session token", "index token"), strict=True))
    assert not leaks, "canaries found:\n" + "\n".join(
        f"  {where}: {', '.join(sorted(named[n] for n in found))}" for where, found in sorted(leaks.items())
    )
