"""Build plumbing without docker: build args, the assembled context, the Dockerfile's rules, base recipe."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from whisper_release.build import baseimage
from whisper_release.build import docker as build
from whisper_release.core.errors import BuildError, ConfigError, ToolError
from whisper_release.core.pins import load_pins, project_root
from whisper_release.testing import require_tool

DOCKERFILE = project_root() / "Dockerfile"


@pytest.fixture
def inputs(tmp_path: Path) -> build.BuildInputs:
    src = tmp_path / "src"
    (src / "ggml").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("project(x)\n")
    (src / "ggml" / "g.c").write_text("int x;\n")
    os.symlink("g.c", src / "ggml" / "link.c")
    models = {}
    for m in ("tiny.en", "base"):
        models[m] = tmp_path / f"{m}-f16.bin"
        models[m].write_bytes(m.encode() * 100)
    sbom_files = {"t-1-py3-none-any.whl": tmp_path / "t.whl", "openai_whisper-1.tar.gz": tmp_path / "a.tgz"}
    for path in sbom_files.values():
        path.write_bytes(path.name.encode())
    prof = load_pins().profile("offline")
    return build.BuildInputs(prof, src, models, {"source": {"tree": "x"}}, sbom_files)


def test_build_args_come_from_the_pins() -> None:
    pins = load_pins()
    args = build.build_args(pins, "base:tag", ["tiny.en", "base"])
    assert tuple(args["CMAKE_FLAGS"].split()) == (
        *pins.build.cmake_flags, "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"
    )
    assert args["EXPECTED_CPU_VARIANT"] == pins.build.expected_cpu_variant
    # one `<variant>=<flags cmake must print>` per shipped module, the floor first with the floor's flags
    variants = [v.split("=", 1) for v in args["CPU_VARIANTS"].split()]
    assert [n for n, _ in variants] == list(pins.build.cpu_variants)
    assert variants[0][1] == pins.build.expected_cpu_variant
    assert all(f.startswith(pins.build.expected_cpu_variant + ";-m") for _, f in variants[1:])
    assert args["SOURCE_DATE_EPOCH"] == str(pins.build.source_date_epoch)
    assert args["WHISPER_BUILD_COMMIT"] == pins.source.commit
    assert args["BASE_IMAGE"] == "base:tag"
    assert args["JOBS"] == "2"
    # quantize.sh gets every file name from the layout (one owner of names): input:type:output.
    jobs = [j.split(":") for j in args["QUANTIZE_JOBS"].split()]
    assert jobs[:2] == [
        ["base.bin", "q5_1", "ggml-base-q5_1.bin"], ["base.bin", "q8_0", "ggml-base-q8_0.bin"]
    ]
    assert len(jobs) == 2 * len(pins.quantizations)


def test_dockerfile_has_no_pins_and_pulls_nothing() -> None:
    text = DOCKERFILE.read_text()
    pins = load_pins()
    for flag in pins.build.cmake_flags:
        assert flag not in text, f"{flag} is a literal in the Dockerfile; it must arrive as a build arg"
    assert pins.source.commit not in text
    assert not re.search(r"^#\s*syntax", text, re.M | re.I)
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    # The release stages come first; stages after `output` (benchmark references) build only on --target.
    assert froms[:3] == [
        ("${BASE_IMAGE}", "builder"),
        ("builder", "organizer"),
        ("scratch", build.OUTPUT_STAGE),
    ]
    assert all(image in ("${BASE_IMAGE}", "builder", "scratch") for image, _ in froms)
    # Compile before models: a model change must not invalidate the compile layer.
    assert text.index('compile.sh"]') < text.index("COPY models/")
    instructions = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not any("--network" in ln or "http" in ln for ln in instructions)


def test_assemble_context_holds_exactly_the_inputs(inputs: build.BuildInputs, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for rel in ("Dockerfile", ".dockerignore", "packaging"):
        src = project_root() / rel
        dst = root / rel
        if src.is_dir():
            subprocess.run(["cp", "-r", src, dst], check=True)
        else:
            dst.write_bytes(src.read_bytes())
    pins = load_pins()
    ctx = build.assemble_context(pins, inputs, "base:tag", "sha256:" + "d" * 64, root)
    assert ctx == root / "build" / "context" / "offline"
    assert sorted(p.name for p in ctx.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "build.json",
        "models",
        "packaging",
        "sbom",
        "source",
    ]
    # The SBOM writer's wheels and the weights' licence source, hardlinked like every input.
    wheel = ctx / "sbom" / "wheels" / "t-1-py3-none-any.whl"
    assert wheel.stat().st_ino == (tmp_path / "t.whl").stat().st_ino
    assert (ctx / "sbom" / "openai_whisper-1.tar.gz").read_bytes() == b"a.tgz"
    assert {p.name for p in (ctx / "packaging").iterdir()} >= {
        "compile.sh",
        "artifacts.py",
        "readme.py",
        "sbom.py",
        "README.template.md",
    }
    # Hardlinks, not copies: assembling the context costs no disk space.
    assert (ctx / "models" / "base.bin").stat().st_ino == inputs.models["base"].stat().st_ino
    assert (ctx / "source" / "ggml" / "g.c").stat().st_ino == (
        inputs.source_dir / "ggml" / "g.c"
    ).stat().st_ino
    assert os.readlink(ctx / "source" / "ggml" / "link.c") == "g.c"
    desc = json.loads((ctx / "build.json").read_text())
    assert desc["models"]["base"]["sha256"] == hashlib.sha256(b"base" * 100).hexdigest()
    assert desc["base_image"]["id"] == "sha256:" + "d" * 64
    assert desc["source"]["tree"] == pins.source.tree
    assert desc["inputs"] == {"source": {"tree": "x"}}
    assert desc["sbom"]["assets"]["license_file"] == pins.assets.license_file
    assert [t["name"] for t in desc["sbom"]["tools"]][0] == "cyclonedx-python-lib"
    # A second assembly replaces the first whole; no temp dirs are left behind.
    inputs2 = dataclasses.replace(
        inputs, models={"tiny.en": inputs.models["tiny.en"], "base": inputs.models["base"]}
    )
    build.assemble_context(pins, inputs2, "base:tag", "sha256:" + "d" * 64, root)
    assert [p.name for p in (root / "build" / "context").iterdir()] == ["offline"]


def test_assemble_context_refuses_incomplete_inputs(inputs: build.BuildInputs, tmp_path: Path) -> None:
    pins = load_pins()
    partial = dataclasses.replace(inputs, models={"base": inputs.models["base"]})
    with pytest.raises(BuildError, match=r"lack models \['tiny.en'\]"):
        build.assemble_context(pins, partial, "t", "i", tmp_path)
    nosrc = dataclasses.replace(inputs, source_dir=tmp_path)
    with pytest.raises(BuildError, match="no whisper.cpp source tree"):
        build.assemble_context(pins, nosrc, "t", "i", tmp_path)


def test_missing_docker_is_a_tool_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match="'docker' is not on PATH"):
        baseimage.docker_ready()


def test_unreachable_daemon_is_a_tool_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_tool("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(ToolError, match=r"Docker daemon is not reachable .*start it"):
        baseimage.docker_ready()


def test_recipe_tag_tracks_the_recipe() -> None:
    pins = load_pins()
    off = baseimage.recipe_for(pins.profile("offline"))
    prod = baseimage.recipe_for(pins.profile("production"))
    assert re.fullmatch(r"whisper-release/builder-base:bookworm-[0-9a-f]{12}", off.tag)
    assert off.tag == baseimage.recipe_for(load_pins().profile("offline")).tag
    assert prod.mirror.endswith(pins.build.debian_snapshot + "/") and prod.tag != off.tag
    more = dataclasses.replace(off, packages=(*off.packages, "git"))
    assert more.tag != off.tag
    assert off.packages == tuple(sorted(off.packages))


def test_recipe_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="Unknown profile 'nope'"):
        load_pins().profile("nope")


def test_rootfs_tar_is_deterministic(tmp_path: Path) -> None:
    require_tool("tar")
    root = tmp_path / "root"
    (root / "b").mkdir(parents=True)
    (root / "b" / "z").write_text("z")
    (root / "a").write_text("a")
    baseimage.pack_rootfs(root, tmp_path / "1.tar", 1704067200)
    os.utime(root / "a", (1, 1))
    (root / "b" / "y").write_text("y")
    (root / "b" / "y").unlink()
    baseimage.pack_rootfs(root, tmp_path / "2.tar", 1704067200)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    listing = subprocess.run(["tar", "-tvf", tmp_path / "1.tar"], capture_output=True, text=True).stdout
    assert [ln.split()[-1] for ln in listing.splitlines()] == ["./", "./a", "./b/", "./b/z"]
    assert "2024-01-01" in listing


def test_dry_run_does_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "dist"
    pins = load_pins()
    assert build.build(pins.profile("offline"), pins, dry_run=True, out=out) == out
    err = capsys.readouterr().err
    assert "--build-arg CMAKE_FLAGS=" in err and "would extract" in err
    assert not out.exists()


def test_compare_trees_names_every_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same.so").write_bytes(b"same")
    (a / "d" / "lib.so").write_bytes(b"one")
    (b / "d" / "lib.so").write_bytes(b"two")
    (a / "only-a.json").write_text("{}")
    assert build.compare_trees(a, b) == ["d/lib.so", "only-a.json"]
    (b / "only-a.json").write_text("{}")
    (b / "d" / "lib.so").write_bytes(b"one")
    assert build.compare_trees(a, b) == []


def test_stable_provenance_drops_run_state() -> None:
    prov = {
        "records": [{"item": "x", "status": "downloaded", "sha256": "s", "path": "/root/.cache/x"}],
        "source": {"tree": "t", "status": "cached"},
    }
    assert build.stable_provenance(prov) == {
        "records": [{"item": "x", "sha256": "s"}],
        "source": {"tree": "t"},
    }


def test_progress_prints_steps_and_stages_with_durations() -> None:
    lines: list[str] = []
    now = [0.0]
    progress = build.BuildProgress(emit=lines.append, clock=lambda: now[0])
    # (seconds elapsed before the line arrives, the line)
    for dt, raw in [
        (1, "Sending build context to Docker daemon  300MB\n"),
        (2, "Step 1/4 : FROM local/base:tag AS builder\n"),
        (0, " ---> 0123\n"),
        (3, "Step 2/4 : RUN make\n"),
        (0, " ---> Using cache\n"),
        (5, "Step 3/4 : FROM scratch AS output\n"),
        (7, "Step 4/4 : COPY --from=builder /out /out\n"),
        (0, "\x1b[91mwarning: colour codes are stripped\x1b[0m\n"),
        (11, ""),
    ]:
        now[0] += dt
        if raw:
            progress.feed(raw)
    progress.finish()
    assert lines == [
        "  [1/4] FROM local/base:tag AS builder  (3.0 s)",
        "  [2/4] RUN make  (cached)  (5.0 s)",
        "stage builder: 8.0 s",
        "  [3/4] FROM scratch AS output  (7.0 s)",
        "  [4/4] COPY --from=builder /out /out  (11.0 s)",
        "stage output: 18.0 s",
        "docker build done in 29.0 s",
    ]
    assert progress.tail[-1] == "warning: colour codes are stripped"
    assert progress.image_id == ""
    progress.feed("Successfully built 0a1b2c3d4e5f\n")
    progress.feed("Successfully tagged whisper-release/artifacts:offline\n")
    assert progress.image_id == "0a1b2c3d4e5f"


def test_progress_keeps_a_failed_steps_error_lines() -> None:
    progress = build.BuildProgress(emit=lambda _: None)
    progress.feed("Step 7/9 : RUN compile.sh\n")
    progress.feed("error: cmake chose CPU backend flags '', expected '-mavx2'\n")
    for i in range(40):
        progress.feed(f"noise {i}\n")
    shown = progress.last_lines()
    assert shown[0].startswith("error: cmake chose")
    assert shown[-1] == "noise 39" and len(shown) == 26
    assert progress.step == "[7/9] RUN compile.sh"
