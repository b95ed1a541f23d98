"""The doc-check's second half (docs/index.md): documented commands that need built artifacts, and
documented error texts that need a staged failure (unreachable index or docker daemon, a truncated
model, a CPU without AVX2), each produced for real and compared with docs/troubleshooting.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from doccheck import ROOT, Block, blocks, fresh_tmp, run_shell, scrubbed_env, text_pattern

from whisper_release.core.pins import load_pins
from whisper_release.testing import require_tool, unavailable

pytestmark = pytest.mark.integration

ALL = blocks()
ARTIFACTS = Path(os.environ.get("WHISPER_RELEASE_ARTIFACTS", ROOT / "dist" / "release_artifacts"))
BASE = ARTIFACTS / "whisper_base_xeon"


def _need_build() -> None:
    if not (ARTIFACTS / "manifest.json").is_file() or not BASE.is_dir():
        unavailable(f"the built offline release in {ARTIFACTS} (run `invoke build`) is missing",
                    "; CI builds it first")


def _jfk() -> Path:
    pins = load_pins()
    from whisper_release.inputs.fetch import fetch_source

    return fetch_source(pins, pins.profile("offline").source) / pins.sample.path


def _block(name: str) -> Block:
    (b,) = [b for b in ALL if b.marker == "integration" and b.marker_arg == name]
    return b


def _real_cache_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The scrubbed environment, but with the caller's (warm) input cache."""
    env = scrubbed_env(tmp, extra)
    cache = os.environ.get("WHISPER_RELEASE_CACHE")
    if cache:
        env["WHISPER_RELEASE_CACHE"] = cache
    else:
        env.pop("WHISPER_RELEASE_CACHE")
    return env


def _compare(block: Block, code: int, out: str, want: int) -> None:
    assert code == want, f"{block.where}: exited {code}, the docs say {want}:\n{out[-3000:]}"
    assert text_pattern(block.expected_text()).search(out), (
        f"{block.where}: the command printed\n{out[-3000:]}\nbut the docs show\n{block.expected_text()}"
    )


def scenario_index_unreachable(block: Block, tmp: Path) -> None:
    (line,) = block.commands()
    # An empty cache, so the fetch must ask the (refused) index; the retries take about 31 s.
    code, out = run_shell(line, scrubbed_env(tmp), timeout=300)
    _compare(block, code, out, 3)
    assert not list((tmp / "cache").rglob("*.whl")), "a failed fetch left files in the cache"


def scenario_docker_unreachable(block: Block, tmp: Path) -> None:
    (line,) = block.commands()
    code, out = run_shell(line, _real_cache_env(tmp), timeout=600)
    _compare(block, code, out, 6)


def scenario_truncated_model(block: Block, tmp: Path) -> None:
    _need_build()
    (line,) = block.commands()
    broken = tmp / "broken" / "whisper_base_xeon"
    shutil.copytree(BASE, broken)
    model = next(broken.glob("ggml-*-q5_1.bin"))
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size // 2)
    shutil.copy(_jfk(), tmp / "speech.wav")
    code, out = run_shell(line, scrubbed_env(tmp), cwd=tmp)
    _compare(block, code, out, 4)


def scenario_cpu_without_avx2(block: Block, tmp: Path) -> None:
    _need_build()
    unshare = require_tool(
        "unshare", "util-linux: a private mount namespace shows the CLI a CPU without AVX2"
    )
    (line,) = block.commands()
    fake = tmp / "cpuinfo"
    fake.write_text(re.sub(r" (avx2|fma)(?= |$)", "", Path("/proc/cpuinfo").read_text(), flags=re.M))
    assert " avx2" not in fake.read_text()
    shutil.copy(_jfk(), tmp / "speech.wav")
    cmd = line.replace("/srv/whisper/base", str(BASE))
    wrapped = f"mount --bind {fake} /proc/cpuinfo && exec {cmd}"
    p = subprocess.run(
        [unshare, "-rm", "bash", "-c", wrapped],
        cwd=tmp,
        env=scrubbed_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _compare(block, p.returncode, p.stdout + p.stderr, 9)


def scenario_service(block: Block, tmp: Path) -> None:
    _need_build()
    start, request = block.commands()
    argv = start.split()
    argv[argv.index("--port") + 1] = "0"
    assert argv[0] == "python"
    proc = subprocess.Popen(
        [sys.executable, *argv[1:]],
        cwd=ROOT,
        env=scrubbed_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if not m:
            proc.kill()
            pytest.fail(f"the service did not start: {line!r}\n{proc.stderr.read()[-3000:]}")
        url = m.group(1)
        with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
            assert r.status == 200
        # The documented curl line, pointed at the port the service got.
        shutil.copy(_jfk(), tmp / "speech.wav")
        require_tool("curl")
        code, out = run_shell(request.replace("http://127.0.0.1:8080", url), scrubbed_env(tmp), cwd=tmp)
        assert code == 0, out
        assert "00:00:00,000 -->" in out, out
        words = re.sub(r"[^a-z ]", "", out.lower())
        assert "ask not what your country can do for you" in words, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


SCENARIOS: dict[str, Callable[[Block, Path], None]] = {
    "index-unreachable": scenario_index_unreachable,
    "docker-unreachable": scenario_docker_unreachable,
    "truncated-model": scenario_truncated_model,
    "cpu-without-avx2": scenario_cpu_without_avx2,
    "service": scenario_service,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_documented_scenario(name: str):
    start = time.monotonic()
    SCENARIOS[name](_block(name), fresh_tmp())
    assert time.monotonic() - start < 600


def test_every_integration_marker_has_a_scenario():
    names = {b.marker_arg for b in ALL if b.marker == "integration"}
    assert names == set(SCENARIOS), f"docs name {sorted(names)}, scenarios are {sorted(SCENARIOS)}"


AFTER_BUILD = [b for b in ALL if b.marker == "run-after-build"]


@pytest.mark.parametrize("block", AFTER_BUILD, ids=[b.where for b in AFTER_BUILD])
def test_documented_commands_on_the_built_release_run(block: Block):
    _need_build()
    tmp = fresh_tmp()
    for line in block.commands():
        code, out = run_shell(line, _real_cache_env(tmp))
        assert code == 0, f"{block.where}: `{line}` exited {code}:\n{out[-2000:]}"
