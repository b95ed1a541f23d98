"""The benchmark's refusal to time while a build runs, its CPU lock, and its pure helpers."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whisper_release.bench import __main__ as bench_cli
from whisper_release.bench import engines, host, references, tune
from whisper_release.bench.matrix import matrix, pytest_args
from whisper_release.core.errors import ConfigError, ReleaseError
from whisper_release.core.pins import load_pins

BENCH = Path(__file__).parents[3] / "src" / "whisper_release" / "bench"
# What a function may import itself: the optional peers and what only the [test]/[bench] extras install.
OPTIONAL = {"faster_whisper", "ctranslate2", "pywhispercpp", "matplotlib", "pytest"}


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus", "-quiet", "x.cpp"], "cc1plus"),
        (["cc1", "-quiet"], "cc1"),
        (["docker", "build", "--network=none", "."], "docker build"),
        (["/usr/bin/docker", "--context", "x", "build", "."], "docker build"),
        (["docker", "buildx", "build", "."], "docker build"),
        (["cmake", "--build", "/build/cmake", "-j", "2"], "cmake --build"),
        (["cmake", "-S", ".", "-B", "build"], None),
        (["docker", "images"], None),
        (["docker", "ps"], None),
        (["/usr/sbin/dockerd"], None),
        (["python", "build.py"], None),
        ([], None),
    ],
)
def test_classify_busy(argv, kind):
    assert host.classify_busy(argv) == kind


def _fake_proc(root: Path, procs: dict[int, list[str]]) -> Path:
    for pid, argv in procs.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()
    return root


def test_refuses_to_time_while_a_build_runs(tmp_path):
    proc = _fake_proc(
        tmp_path / "proc", {10: ["bash"], 42: ["docker", "build", "."], 7: ["cmake", "--build", "b"]}
    )
    assert [b.split(":")[0] for b in host.busy_processes(proc)] == ["7", "42"]
    with pytest.raises(host.HostBusyError) as e:
        host.check_quiet(proc_root=proc, max_load=None)
    msg = str(e.value)
    assert msg.startswith("Refusing to time anything while a build runs") and "2 build process(es)" in msg
    assert "7: cmake --build" in msg and msg.count(".") >= 1 and "\n" not in msg
    assert isinstance(e.value, ReleaseError) and e.value.exit_code != 0


def test_quiet_host_passes_and_high_load_refuses(tmp_path):
    proc = _fake_proc(tmp_path / "proc", {10: ["bash"], 11: ["python", "-m", "pytest"]})
    host.check_quiet(proc_root=proc, max_load=1.5, load=0.4)
    with pytest.raises(host.HostBusyError, match=r"load average is 2\.70, wanted below 1\.50"):
        host.check_quiet(proc_root=proc, max_load=1.5, load=2.7)


def test_a_real_compiler_process_is_seen(tmp_path):
    fake = tmp_path / "cc1plus"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", fake)
    p = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while not any(s.startswith(f"{p.pid}:") for s in host.busy_processes()):
            assert time.monotonic() < deadline, "the running cc1plus was not found in /proc"
            time.sleep(0.05)
        # Other builds may run too (then the message names the first): the refusal is what counts.
        with pytest.raises(host.HostBusyError, match="while a build runs on this host"):
            host.check_quiet(max_load=None)
    finally:
        p.kill()
        p.wait()


def test_cpu_lock_is_exclusive_across_processes(tmp_path):
    lock = tmp_path / "cpu.lock"
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "held"
        with pytest.raises(host.HostBusyError, match="stayed taken"):
            with host.cpu_lock(lock, timeout=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with host.cpu_lock(lock, timeout=5):
        r = subprocess.run(["flock", "-n", str(lock), "true"])
        assert r.returncode != 0  # held by us: a non-blocking flock elsewhere must fail


def test_fitted_audio_ctx():
    # The tight fit (floor 0) the "fitted" variants time; the product's formula, tested in full in
    # test_audio_ctx.py. Clips of 15 s or more keep the full window (0).
    assert engines.fitted_audio_ctx(16000 * 11, floor=0) == 550 + 64
    assert engines.fitted_audio_ctx(16000 * 40, floor=0) == 0
    assert engines.fitted_audio_ctx(1, floor=0) == 65


def test_reference_settings_come_from_release_toml():
    pins = load_pins()
    s = references.reference_settings(pins, "native")
    assert "-DGGML_NATIVE=ON" in s["REF_CMAKE_FLAGS"] and s["REF_CPU_VARIANT"] == "-march=native"
    g = references.reference_settings(pins, "generic")
    assert "-DGGML_AVX=OFF" in g["REF_CMAKE_FLAGS"] and "-DGGML_AVX2=OFF" in g["REF_CMAKE_FLAGS"]
    # llamafile: exactly the release's flags plus one, and the release's CPU variant line.
    lf = references.reference_settings(pins, "llamafile")
    release = " ".join(pins.build.cmake_flags)
    assert lf == {"REF_CMAKE_FLAGS": release + " -DGGML_LLAMAFILE=ON",
                  "REF_CPU_VARIANT": pins.build.expected_cpu_variant}  # fmt: skip
    with pytest.raises(ConfigError, match=r"no \[bench.reference.avx9\]"):
        references.reference_settings(pins, "avx9")


def test_dockerfile_has_one_reference_stage_driven_by_build_args():
    text = (Path(__file__).parents[3] / "Dockerfile").read_text()
    assert text.count(f"AS {references.REFERENCE_STAGE}\n") == 1
    assert 'CMAKE_FLAGS="$REF_CMAKE_FLAGS" EXPECTED_CPU_VARIANT="$REF_CPU_VARIANT"' in text


def test_matrix_covers_every_comparison(tmp_path):
    m = matrix(load_pins(), root=tmp_path)
    ids = {c.id for c in m}
    for want in (
        "whisper.cpp-artifact-base-q5_1",
        "whisper.cpp-artifact-base-f16",
        "whisper.cpp-native-base-q5_1",
        "whisper.cpp-generic-base-q5_1",
        "faster-whisper-base-int8",
        "faster-whisper-base-float32",
        "pywhispercpp-base-q5_1",
        "whisper.cpp-artifact-medium-q5_1-random",
        "whisper.cpp-tuned-base-q5_1",
        # every shipped type is timed on the artifact, the reference builds get the primary only
        "whisper.cpp-artifact-base-q8_0",
        "whisper.cpp-artifact-tiny.en-q8_0",
        "whisper.cpp-tuned-base-q8_0",
        "faster-whisper-base-int8-avx2",
    ):
        assert want in ids
    assert "whisper.cpp-native-base-q8_0" not in ids and "whisper.cpp-generic-base-q8_0" not in ids
    q8 = next(c for c in m if c.id == "whisper.cpp-artifact-base-q8_0")
    assert q8.spec.model.endswith("whisper_base_xeon/ggml-base-q8_0.bin")
    assert q8.decodes == ("greedy", "beam5")
    assert all(c.random_weights == c.id.endswith("-random") for c in m)
    assert all("transcribe" not in c.ops for c in m if c.random_weights)
    assert not [c for c in matrix(load_pins(), root=tmp_path, quick=True) if c.random_weights]


def test_environment_records_cpu_threads_versions():
    env = host.environment(2)
    assert env["threads"] == 2 and env["cpu"] and env["whisper_cpp"] == load_pins().source.version
    assert "faster_whisper" in env and "pywhispercpp" in env


def test_worker_reports_errors_as_one_message():
    import io
    import json

    out = io.StringIO()
    engines.worker_main(io.StringIO('{"op": "bogus"}\n{"op": "rss"}\n{"op": "quit"}\n'), out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert answers[0]["ok"] is False and "unknown worker op 'bogus'" in answers[0]["error"]
    assert answers[1]["ok"] and answers[1]["result"] > 1_000_000  # bytes, not KiB
    assert answers[2] == {"ok": True}


def test_worker_process_names_the_engine_when_it_fails(tmp_path):
    spec = engines.EngineSpec("whisper.cpp", str(tmp_path / "none.bin"), lib_dir=str(tmp_path))
    with pytest.raises(ReleaseError, match=r"worker for whisper.cpp .*none.bin failed at 'init'"):
        engines.Worker(spec)
    assert os.environ.get("BENCH_THREADS") is None


def test_cpu_monitor_counts_other_processes_not_the_listed_ones():
    spin = [sys.executable, "-c", "import time\nt = time.time() + 1.5\nwhile time.time() < t: pass"]
    other = subprocess.Popen(spin)
    with host.CpuMonitor() as foreign:
        time.sleep(1.0)
    other.wait()
    mine = subprocess.Popen(spin)
    with host.CpuMonitor([mine.pid]) as listed:
        time.sleep(1.0)
    mine.wait()
    # One busy process on this host's CPUs: about 1/cpu_count of them, whatever else runs.
    assert foreign.foreign_share >= 0.6 / (os.cpu_count() or 1)
    assert listed.foreign_share < foreign.foreign_share


def test_regression_gate_is_opt_in_and_needs_a_baseline(tmp_path):
    history = tmp_path / "history"
    first = pytest_args(tmp_path, history, ["--bench-quick"], gate="15")
    assert "--benchmark-autosave" in first and first[-1] == "--bench-quick"
    assert not [a for a in first if a.startswith("--benchmark-compare")]  # nothing saved yet
    (history / "Linux-CPython-3.11-64bit").mkdir(parents=True)
    (history / "Linux-CPython-3.11-64bit" / "0001_run.json").write_text("{}")
    assert "--benchmark-compare" in pytest_args(tmp_path, history)
    assert not [a for a in pytest_args(tmp_path, history) if a.startswith("--benchmark-compare-fail")]
    gated = pytest_args(tmp_path, history, gate="15")
    assert "--benchmark-compare-fail=median:15%" in gated
    with pytest.raises(ConfigError, match="WHISPER_RELEASE_BENCH_GATE='fast' is not a percentage"):
        pytest_args(tmp_path, history, gate="fast")


def test_tuning_variants_add_the_llamafile_build_when_it_exists():
    without = {v.name for v in tune.tuning_variants("base", "q5.bin", "q8.bin", "ct2", "art", "f16.bin")}
    assert not any(n.startswith("llamafile") for n in without)
    vs = tune.tuning_variants("base", "q5.bin", "q8.bin", "ct2", "art", "f16.bin", llamafile_lib="ref/lf")
    lf = {v.name: v for v in vs if v.name.startswith("llamafile")}
    assert sorted(lf) == [
        "llamafile build, f16 model, greedy",
        "llamafile build, q5_1 model, greedy",
        "llamafile build, q8_0 model, audio_ctx floor 750, fallback on",
        "llamafile build, q8_0 model, greedy",
    ]
    assert all(v.spec.lib_dir == "ref/lf" for v in lf.values())
    assert lf["llamafile build, q8_0 model, greedy"].spec.model == "q8.bin"


def test_the_avx2_peer_caps_every_dispatcher_of_ctranslate2(tmp_path):
    (c,) = [c for c in matrix(load_pins(), root=tmp_path) if c.id == "faster-whisper-base-int8-avx2"]
    assert c.spec.compute_type == "int8" and c.quant == "int8-avx2"
    assert c.spec.env == {"CT2_FORCE_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                          "ONEDNN_MAX_CPU_ISA": "AVX2"}  # fmt: skip
    names = {v.name for v in tune.tuning_variants("base", "q5", None, "ct2", "art")}
    assert {"faster-whisper int8, AVX2 only, greedy", "faster-whisper int8, AVX2 only, beam 5"} <= names


def test_every_bench_module_stays_under_700_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in BENCH.glob("*.py")}
    for name in ("host.py", "references.py", "engines.py", "matrix.py", "tune.py", "__main__.py"):
        assert name in sizes, f"bench/{name} is missing"
    assert not {n: s for n, s in sizes.items() if s >= 700}, sizes


def test_bench_imports_inside_functions_only_optional_dependencies_each_with_a_reason():
    wrong = []
    for path in sorted(BENCH.glob("*.py")):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in inner:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                wrong += [
                    f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] not in OPTIONAL
                ]
            first = min((n.lineno for n in inner), default=0)
            if first and not lines[first - 2].strip().startswith("#"):
                wrong.append(f"{path.name}:{first}: no comment above the import saying why it is here")
    assert not wrong, "\n".join(wrong)


def test_the_command_line_lists_its_commands():
    p = subprocess.run(
        [sys.executable, "-m", "whisper_release.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert "python -m whisper_release.bench" in p.stdout
    for command in ("run", "tune", "reference", "worker"):
        assert f"\n    {command}" in p.stdout, p.stdout


def test_run_hands_its_options_to_pytest_and_the_others_refuse_unknown_ones(capsys):
    argv = ["run", "--bench-quick", "--bench-generated", "small", "-k", "base", "--benchmark-min-rounds=3"]
    args, extra = bench_cli.parser().parse_known_args(argv)
    assert args.command == "run" and extra == argv[1:]
    args, extra = bench_cli.parser().parse_known_args(
        ["tune", "tiny.en", "--only=q8_0", "--only", "beam", "--quick"]
    )
    assert (args.model, args.quick, args.only, extra) == ("tiny.en", True, ["q8_0", "beam"], [])
    with pytest.raises(SystemExit) as e:
        bench_cli.main(["tune", "--quik"])
    assert e.value.code == 2 and "unrecognized arguments: --quik" in capsys.readouterr().err


def test_an_unknown_reference_build_is_one_sentence_and_its_exit_code(capsys):
    assert bench_cli.main(["reference", "avx9"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: release.toml has no [bench.reference.avx9]") and err.count("\n") == 1
