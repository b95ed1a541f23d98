"""The real offline build: debootstrap base, docker build --network=none, extraction, then checks.

One cold build per run (session fixture, into dist/release_artifacts like `invoke build`); the warm
rebuild test reuses the layer cache, so the whole module costs one compile.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from whisper_release.build import baseimage
from whisper_release.build import docker as build
from whisper_release.core.errors import BuildError
from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.layout import artifacts, readme
from whisper_release.testing import require_tool

pytestmark = pytest.mark.integration

PROFILE = "offline"
# Anything only AVX-512 (EVEX) code has: zmm or mask registers, masking, EVEX-only mnemonics.
AVX512 = re.compile(
    r"%zmm\d|%k[0-7]\b|\{%k[0-7]\}|\bvpternlog|\bvpermt2|\bvpcompress|\bvpexpand|\bvcvtne2ps2bf16"
    r"|\bvpmovm2|\bvpdpbusd|\bvpdpwssd"
)


@pytest.fixture(scope="session")
def inputs() -> build.BuildInputs:
    pins = load_pins()
    return build.fetch_inputs(pins.profile(PROFILE), pins)


@pytest.fixture(scope="session")
def dist(inputs: build.BuildInputs) -> Path:
    require_tool("docker")
    require_tool("debootstrap")
    return build.build(
        inputs.profile, load_pins(), inputs=inputs, out=project_root() / "dist" / "release_artifacts"
    )


@pytest.fixture(scope="session")
def models() -> tuple[str, ...]:
    return load_pins().profile(PROFILE).model_names


def _word_list(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


def test_layout_and_sha256sums(dist: Path, models: tuple[str, ...]) -> None:
    sha256sum = require_tool("sha256sum")
    pins = load_pins()
    assert artifacts.check_tree(dist, models, pins.quantizations, pins.build.cpu_variants) == []
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        ["manifest.json", *(artifacts.model_dir_name(m) for m in models)]
    )
    for m in models:
        d = dist / artifacts.model_dir_name(m)
        proc = subprocess.run(
            [sha256sum, "-c", "--strict", "SHA256SUMS"], cwd=d, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for rel in artifacts.relative_files(d):
            p = d / rel
            assert p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o644


def _ours(cpu_variants: tuple[str, ...]) -> tuple[str, ...]:
    """The shipped libraries built from whisper.cpp (libgomp comes from the image's GCC)."""
    return tuple(lib for lib in artifacts.libraries(cpu_variants) if lib != artifacts.OPENMP_LIBRARY)


def test_libraries_load_from_origin(dist: Path, models: tuple[str, ...]) -> None:
    readelf = require_tool("readelf")
    d = dist / artifacts.model_dir_name(models[0])
    for lib in _ours(load_pins().build.cpu_variants):
        dyn = subprocess.run([readelf, "-d", d / lib], capture_output=True, text=True, check=True).stdout
        assert re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[\$ORIGIN\]", dyn), f"{lib}:\n{dyn}"
    dyn = subprocess.run(
        [readelf, "-d", d / "libwhisper.so"], capture_output=True, text=True, check=True
    ).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    assert {"libggml.so.0", "libggml-base.so.0"} <= needed


def _floor_and_general_libraries_have_avx2_fma_and_no_avx512(d: Path, cpu_variants: tuple[str, ...]) -> None:
    """The floor's CPU library has AVX2/FMA/F16C code; it and every library that is not a module
    above the floor hold no AVX-512 (those modules are held to their own ISA by the exact audit)."""
    objdump = require_tool("objdump")
    libs = artifacts.libraries(cpu_variants)
    floor = (
        artifacts.cpu_module_file(cpu_variants[0]) if len(cpu_variants) > 1 else artifacts.LINKED_CPU_LIBRARY
    )
    cpu = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", d / floor],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for wanted in ("vfmadd", "vpmaddubsw", "%ymm", "vcvtph2ps"):
        assert wanted in cpu, f"{floor} has no {wanted}: not an AVX2/FMA/F16C build"
    higher = {artifacts.cpu_module_file(v) for v in cpu_variants[1:]}
    for lib in (lib for lib in libs if lib not in higher):
        text = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", d / lib], capture_output=True, text=True, check=True
        ).stdout
        hits = sorted({m.group(0) for m in AVX512.finditer(text)})
        assert not hits, f"{lib} holds AVX-512 code: {hits[:10]}"


def test_cpu_library_has_avx2_fma_and_no_avx512(dist: Path, models: tuple[str, ...]) -> None:
    _floor_and_general_libraries_have_avx2_fma_and_no_avx512(
        dist / artifacts.model_dir_name(models[0]), load_pins().build.cpu_variants
    )


@pytest.mark.parametrize("index", [0, 1])
def test_readme_example_transcribes_the_sample(
    dist: Path, inputs: build.BuildInputs, models: tuple[str, ...], index: int, tmp_path: Path
) -> None:
    _readme_example_transcribes(dist, inputs, models[index], tmp_path)


def _readme_example_transcribes(dist: Path, inputs: build.BuildInputs, model: str, tmp_path: Path) -> None:
    pins = load_pins()
    d = dist / artifacts.model_dir_name(model)
    code = readme.python_example((d / "README.md").read_text())
    script = tmp_path / "transcribe.py"
    script.write_text(code)
    sample = inputs.source_dir / pins.sample.path
    # As a user would run it: from the artifact directory, no LD_LIBRARY_PATH, a clean interpreter.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(sample)],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _word_list(proc.stdout), _word_list(pins.sample.reference)
    ratio = difflib.SequenceMatcher(a=want, b=got).ratio()
    assert ratio >= 0.9, (
        f"{model}: transcript {proc.stdout!r} is too far from the reference (ratio {ratio:.2f})"
    )


def test_readme_struct_size_matches_the_header(inputs: build.BuildInputs, tmp_path: Path) -> None:
    cc = require_tool("gcc")
    probe = tmp_path / "probe.c"
    probe.write_text(
        '#include <stdio.h>\n#include "whisper.h"\n'
        'int main(void){printf("%zu %zu\\n", sizeof(struct whisper_full_params),'
        " sizeof(struct whisper_context_params));return 0;}\n"
    )
    src = inputs.source_dir
    subprocess.run(
        [cc, "-I", src / "include", "-I", src / "ggml" / "include", probe, "-o", tmp_path / "probe"],
        check=True,
    )
    out = subprocess.run([tmp_path / "probe"], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [readme.FULL_PARAMS_SIZE, 48]


def test_readme_reports_real_sizes_and_glibc(dist: Path, models: tuple[str, ...]) -> None:
    for m in models:
        d = dist / artifacts.model_dir_name(m)
        text = (d / "README.md").read_text()
        for rel in artifacts.relative_files(d):
            if rel not in ("README.md", "SHA256SUMS", artifacts.SBOM):
                assert re.search(rf"{re.escape(rel)}\s+{(d / rel).stat().st_size:,} bytes", text), rel
        libs = artifacts.libraries(load_pins().build.cpu_variants)
        glibc, _ = artifacts.min_runtime(d / lib for lib in libs)
        assert re.search(rf"glibc {re.escape(glibc)} or\s+newer", text)


def test_manifest_records_the_inputs(dist: Path, inputs: build.BuildInputs) -> None:
    stmt = build.read_manifest(dist)
    pins = load_pins()
    bd = stmt["predicate"]["buildDefinition"]
    deps = {d["name"]: d for d in bd["resolvedDependencies"]}
    assert deps["whisper.cpp"]["digest"] == {
        "gitCommit": pins.source.commit,
        "gitTree": pins.source.tree,
    }
    for name, path in inputs.models.items():
        assert deps[f"model:{name}"]["digest"]["sha256"] == artifacts.sha256_file(path)
    # the single-ISA build records the flags cmake printed; a runtime-module build the modules it ships
    # (compile.sh checked each one's flags at configure)
    b = pins.build
    want = " ".join(b.cpu_variants) if b.runtime_dispatch else b.expected_cpu_variant
    assert bd["internalParameters"]["cpu_backend_variant"] == want
    assert bd["internalParameters"]["compiler"].startswith("g++ ")
    base_id = subprocess.run(
        [
            "docker",
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            deps["builder-base-image"]["uri"].removeprefix("docker-image:"),
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert deps["builder-base-image"]["digest"]["sha256"] == base_id.removeprefix("sha256:")


def test_warm_rebuild_uses_the_cache_and_gives_the_same_bytes(
    dist: Path, inputs: build.BuildInputs, tmp_path: Path
) -> None:
    before = build.artifact_digests(dist)
    again = build.build(inputs.profile, load_pins(), inputs=inputs, out=tmp_path / "warm")
    log = (project_root() / "build" / "logs" / f"docker-build-{PROFILE}.log").read_text()
    compile_step = log[log.index('compile.sh"]') :]
    assert compile_step.lstrip().split("\n", 2)[1].strip() == "---> Using cache", "the compile step re-ran"
    assert build.artifact_digests(again) == before


def _layer_after(log: str, marker: str) -> str:
    """The image id the legacy builder committed for the step whose instruction contains `marker`."""
    m = re.search(re.escape(marker) + r".*?\n ---> (?!Running|Using)([0-9a-f]{12})\n", log, re.S)
    assert m, f"no layer id after {marker!r} in the build log"
    return m.group(1)


def test_model_change_requantizes_without_recompiling(
    dist: Path, inputs: build.BuildInputs, tmp_path: Path
) -> None:
    log_path = project_root() / "build" / "logs" / f"docker-build-{PROFILE}.log"
    build.build(inputs.profile, load_pins(), inputs=inputs, out=tmp_path / "same")
    same = log_path.read_text()
    names = sorted(inputs.models)
    # Each model's f16 file under the other's name: new model bytes, same source and flags.
    swapped = dataclasses.replace(
        inputs, models=dict(zip(names, [inputs.models[n] for n in reversed(names)], strict=True))
    )
    try:
        out = build.build(swapped.profile, load_pins(), inputs=swapped, out=tmp_path / "swapped")
        changed = log_path.read_text()
    finally:  # leave the profile's tag and context on the real inputs (warm: seconds)
        build.build(inputs.profile, load_pins(), inputs=inputs, out=tmp_path / "restored")
    # Layer lineage, not cache hits: true whether or not an earlier run left these layers behind.
    assert _layer_after(same, 'compile.sh"]') == _layer_after(changed, 'compile.sh"]'), (
        "a model change recompiled"
    )
    assert _layer_after(same, 'quantize.sh"]') != _layer_after(changed, 'quantize.sh"]')
    a = artifacts.model_dir_name(names[0])
    assert (out / a / "libwhisper.so").read_bytes() == (dist / a / "libwhisper.so").read_bytes()
    assert (out / a / artifacts.model_file_name(names[0], "q5_1")).read_bytes() == (
        dist / artifacts.model_dir_name(names[1]) / artifacts.model_file_name(names[1], "q5_1")
    ).read_bytes()


def _single_isa_pins() -> Pins:
    """release.toml with [build] cpu_variants = ["haswell"]: the single-ISA build."""
    pins = load_pins()
    return dataclasses.replace(pins, build=dataclasses.replace(pins.build, cpu_variants=("haswell",)))


@pytest.mark.parametrize(
    ("single_isa", "change", "wanted"),
    [
        # The FACTS.md trap: flags that lose AVX2 must stop the build at configure.
        (True, ("CMAKE_FLAGS", "-DGGML_AVX2=ON", "-DGGML_AVX2=OFF"),
         "cmake chose CPU backend flags '-msse4.2;-mf16c;-mfma;-mbmi2;-mavx'"),
        # A runtime module whose flags are not the pinned ones (here: a pin that lost AVX512BW).
        (False, ("CPU_VARIANTS", "-mavx512dq;-mavx512bw icelake", "-mavx512dq icelake"),
         "cmake chose flags '-msse4.2;-mf16c;-mfma;-mbmi2;-mavx;-mavx2;-mavx512f;-mavx512cd;-mavx512vl;"
         "-mavx512dq;-mavx512bw' for CPU module skylakex"),
    ],
)  # fmt: skip
def test_wrong_cpu_flags_fail_the_build_at_configure(
    dist: Path, tmp_path: Path, single_isa: bool, change: tuple[str, str, str], wanted: str
) -> None:
    pins = _single_isa_pins() if single_isa else load_pins()
    prof = pins.profile(PROFILE)
    args = build.build_args(pins, baseimage.recipe_for(prof).tag, [m.name for m in prof.models])
    key, old, new = change
    assert old in args[key]
    args[key] = args[key].replace(old, new)
    context = project_root() / "build" / "context" / PROFILE  # left by the dist fixture's build
    with pytest.raises(BuildError) as e:
        build.docker_build(
            context, "whisper-release/test-failing:latest", args, target="builder", log_path=tmp_path / "log"
        )
    msg = str(e.value)
    assert 'RUN ["/bin/bash", "/packaging/compile.sh"]' in msg
    assert wanted in msg
    assert "Building CXX object" not in (tmp_path / "log").read_text()


def test_haswell_alone_builds_the_single_isa_artifact(
    dist: Path, inputs: build.BuildInputs, models: tuple[str, ...], tmp_path: Path
) -> None:
    """[build] cpu_variants = ["haswell"]: the plain AVX2+FMA build the release was specified as,
    libggml-cpu.so.0 linked into libggml, no module loaded at run time, the README example working."""
    pins = _single_isa_pins()
    try:
        out = build.build(inputs.profile, pins, inputs=inputs, out=tmp_path / "single")
    finally:  # leave the profile's tag and context on the real pins (warm: seconds)
        build.build(inputs.profile, load_pins(), inputs=inputs, out=tmp_path / "restored")
    assert artifacts.check_tree(out, models, pins.quantizations, ("haswell",)) == []
    d = out / artifacts.model_dir_name(models[0])
    assert not list(d.glob("libggml-cpu-*.so"))
    meta = artifacts.load_metadata(d)
    assert meta["cpu_dispatch"] == "linked"
    assert [v["library"] for v in meta["cpu_variants"]] == [artifacts.LINKED_CPU_LIBRARY]
    dyn = subprocess.run([require_tool("readelf"), "-d", d / "libggml.so.0"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "Shared library: [libggml-cpu.so.0]" in dyn
    _floor_and_general_libraries_have_avx2_fma_and_no_avx512(d, ("haswell",))
    _readme_example_transcribes(out, inputs, models[0], tmp_path)


def test_failing_step_is_a_build_error_with_its_last_lines(tmp_path: Path) -> None:
    require_tool("docker")
    tag = subprocess.run(
        ["docker", "images", "-q", "--filter", "reference=whisper-release/builder-base"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if not tag:
        pytest.fail("no builder base image; the build fixture should have made one")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {tag[0]}\nRUN echo preparing && echo 'error: the compiler exploded' >&2 && exit 3\n"
    )
    with pytest.raises(BuildError) as e:
        build.docker_build(tmp_path, "whisper-release/test-failing:latest", {}, log_path=tmp_path / "log")
    msg = str(e.value)
    assert "docker build failed at step [2/2] RUN" in msg
    assert "error: the compiler exploded" in msg


def test_build_steps_have_no_network(tmp_path: Path) -> None:
    """docker_build passes --network=none: a step that opens a connection fails the build."""
    require_tool("docker")
    base = subprocess.run(
        ["docker", "images", "-q", "--filter", "reference=whisper-release/builder-base"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if not base:
        pytest.fail("no builder base image; the build fixture should have made one")
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), 5)"  # TEST-NET-1 address
    (tmp_path / "Dockerfile").write_text(f'FROM {base[0]}\nRUN python3 -c "{probe}"\n')
    with pytest.raises(BuildError) as e:
        build.docker_build(tmp_path, "whisper-release/test-failing:latest", {}, log_path=tmp_path / "log")
    assert "Network is unreachable" in str(e.value)


@pytest.fixture(autouse=True)
def _cleanup_failing_image() -> Iterator[None]:
    yield
    if shutil.which("docker"):
        subprocess.run(["docker", "rmi", "-f", "whisper-release/test-failing:latest"], capture_output=True)


def test_unreachable_mirror_is_one_clear_error(tmp_path: Path) -> None:
    require_tool("debootstrap")
    require_tool("docker")
    import copy

    from whisper_release.core.errors import ToolError
    from whisper_release.core.pins import parse_pins

    pins = load_pins()
    raw = copy.deepcopy(pins.raw)
    raw["build"]["debian_mirror"] = "http://127.0.0.1:9/debian"  # port 9 (discard): nothing listens
    broken = parse_pins(raw, pins.path)
    with pytest.raises(
        ToolError, match=r"debootstrap could not build the bookworm base from http://127\.0\.0\.1:9"
    ):
        baseimage.ensure_base_image(broken.profile("offline"), broken)
    assert baseimage.image_id(baseimage.recipe_for(broken.profile("offline")).tag) is None
    assert not list((project_root() / "build" / "base").glob("rootfs-*")), "temp root filesystem left behind"
