"""Issue 14: which runtime CPU module a process registers. Ranked by ggml's score among the modules
whose flags this CPU has; a module above the floor only after its self-test passed; a failed one
skipped with its reason (the AMX module's SIGILL); a forced one refused rather than replaced."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from whisper_release.core.errors import CpuError
from whisper_release.runtime import modules

FLOOR = ["avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"]
AVX512 = ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]
VARIANTS = {
    "haswell": FLOOR,
    "skylakex": FLOOR + AVX512,
    "icelake": FLOOR + AVX512 + ["avx512vbmi", "avx512_vnni"],
    "alderlake": FLOOR + ["avx_vnni"],
    "zen4": FLOOR + AVX512 + ["avx512vbmi", "avx512_vnni", "avx512_bf16"],
    "sapphirerapids": FLOOR + AVX512 + ["avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"],
}
ZEN4_CPU = set(VARIANTS["zen4"]) | {"sse2"}
SPR_CPU = set(VARIANTS["sapphirerapids"]) | {"avx_vnni"}


@pytest.fixture
def artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, object]]:
    monkeypatch.setenv("WHISPER_RELEASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(modules.FORCE, raising=False)
    d = tmp_path / "whisper_base_xeon"
    d.mkdir()
    meta: dict[str, object] = {
        "cpu_variants": [
            {"name": n, "library": f"libggml-cpu-{n}.so", "cpu_flags": f} for n, f in VARIANTS.items()
        ],
        "model_files": [{"name": "ggml-base-q5_1.bin"}, {"name": "ggml-base-q8_0.bin"}],
    }
    for n in VARIANTS:
        (d / f"libggml-cpu-{n}.so").write_bytes(f"module {n}".encode())
    for m in ("ggml-base-q5_1.bin", "ggml-base-q8_0.bin"):
        (d / m).write_bytes(m.encode())
    return d, meta


class Runner:
    """Records self-tests; `fail` maps a variant to its failure reason."""

    def __init__(self, fail: dict[str, str] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, lib_dir: Path, variant: modules.Variant, models: Sequence[str]) -> str | None:
        self.calls.append((variant.name, tuple(models)))
        return self.fail.get(variant.name)


def test_scores_follow_ggml_cpu_feats() -> None:
    # ggml_backend_cpu_x86_score: 1 + fma 1 + f16c 2 + sse42 4 + bmi2 8 + avx 16 + avx2 32 = 64
    assert modules.Variant("haswell", "", tuple(VARIANTS["haswell"])).score == 64
    assert modules.Variant("alderlake", "", tuple(VARIANTS["alderlake"])).score == 64 + 64
    assert modules.Variant("skylakex", "", tuple(VARIANTS["skylakex"])).score == 64 + 128
    assert modules.Variant("zen4", "", tuple(VARIANTS["zen4"])).score == 64 + 128 + 256 + 512 + 1024


def test_best_module_this_cpu_runs_after_its_self_test(artifact: tuple[Path, dict[str, object]]) -> None:
    d, meta = artifact
    run = Runner()
    choice = modules.choose(d, meta, flags=ZEN4_CPU, runner=run)
    assert (choice.dispatch, choice.variant, choice.library) == ("runtime", "zen4", "libggml-cpu-zen4.so")
    assert "amx_tile" in choice.skipped["sapphirerapids"]
    # one self-test, with every model file of the artifact
    assert run.calls == [("zen4", ("ggml-base-q5_1.bin", "ggml-base-q8_0.bin"))]


def test_a_module_failing_its_self_test_is_skipped_with_the_reason(
    artifact: tuple[Path, dict[str, object]],
) -> None:
    d, meta = artifact
    run = Runner({"sapphirerapids": "self-test died by SIGILL (ggml-base-q8_0.bin)"})
    choice = modules.choose(d, meta, flags=SPR_CPU, runner=run)
    assert choice.variant == "zen4"
    assert choice.skipped == {"sapphirerapids": "self-test died by SIGILL (ggml-base-q8_0.bin)"}
    assert [c[0] for c in run.calls] == ["sapphirerapids", "zen4"]


def test_verdicts_are_cached_per_module_and_cpu(artifact: tuple[Path, dict[str, object]]) -> None:
    d, meta = artifact
    first = Runner({"sapphirerapids": "self-test died by SIGILL"})
    modules.choose(d, meta, flags=SPR_CPU, runner=first)
    again = Runner()
    choice = modules.choose(d, meta, flags=SPR_CPU, runner=again)
    assert again.calls == [] and choice.variant == "zen4"
    assert choice.selftests["sapphirerapids"].startswith("cached: self-test died by SIGILL")
    # a changed module is a new verdict
    (d / "libggml-cpu-sapphirerapids.so").write_bytes(b"rebuilt")
    third = Runner()
    assert modules.choose(d, meta, flags=SPR_CPU, runner=third).variant == "sapphirerapids"
    assert [c[0] for c in third.calls] == ["sapphirerapids"]


def test_the_floor_is_never_self_tested(artifact: tuple[Path, dict[str, object]]) -> None:
    d, meta = artifact
    run = Runner()
    choice = modules.choose(d, meta, flags=set(FLOOR), runner=run)
    assert choice.variant == "haswell" and run.calls == []
    assert set(choice.skipped) == set(VARIANTS) - {"haswell"}


def test_forced_module_is_used_or_refused_never_replaced(artifact: tuple[Path, dict[str, object]]) -> None:
    d, meta = artifact
    assert modules.choose(d, meta, flags=ZEN4_CPU, forced="haswell", runner=Runner()).variant == "haswell"
    with pytest.raises(CpuError, match=r"lacks amx_tile, amx_int8 .* sapphirerapids module"):
        modules.choose(d, meta, flags=ZEN4_CPU, forced="sapphirerapids", runner=Runner())
    with pytest.raises(CpuError, match=r"failed its self-test on this CPU \(died\)"):
        modules.choose(d, meta, flags=ZEN4_CPU, forced="icelake", runner=Runner({"icelake": "died"}))
    with pytest.raises(CpuError, match=r"names no CPU module .* haswell, skylakex"):
        modules.choose(d, meta, flags=ZEN4_CPU, forced="cannonlake", runner=Runner())


def test_single_isa_artifact_is_linked(tmp_path: Path) -> None:
    meta = {"cpu_variants": [{"name": "haswell", "library": "libggml-cpu.so.0", "cpu_flags": FLOOR}]}
    choice = modules.choose(tmp_path, meta, flags=set(), runner=Runner())
    assert (choice.dispatch, choice.library) == ("linked", "libggml-cpu.so.0")
    # artifacts made before runtime modules have no cpu_variants at all
    assert modules.choose(tmp_path, {}, flags=set()).dispatch == "linked"


def test_model_files_are_keyed_by_their_stated_sha256_not_read_again(
    artifact: tuple[Path, dict[str, object]],
) -> None:
    """A load finds its cached verdict without reading the weights: artifact.json's sha256s (checked
    against the bytes by pull and transcribe) key the verdict; a changed digest is a new verdict."""
    d, meta = artifact
    meta["model_files"] = [{"name": "ggml-base-q5_1.bin", "sha256": "a" * 64}]
    (d / "ggml-base-q5_1.bin").unlink()  # never opened
    first = Runner()
    assert modules.choose(d, meta, flags=ZEN4_CPU, runner=first).variant == "zen4"
    assert first.calls == [("zen4", ("ggml-base-q5_1.bin",))]
    again = Runner()
    modules.choose(d, meta, flags=ZEN4_CPU, runner=again)
    assert again.calls == []
    meta["model_files"] = [{"name": "ggml-base-q5_1.bin", "sha256": "b" * 64}]
    changed = Runner()
    modules.choose(d, meta, flags=ZEN4_CPU, runner=changed)
    assert [c[0] for c in changed.calls] == ["zen4"]
