"""Read release.toml (the one pins file) into typed, validated objects.

Everything else asks this module for pins; nothing else parses release.toml. Each table is a
frozen dataclass, and `load_pins` checks every key of the file against the field types when it
loads: a missing, mistyped or unknown key is a ConfigError naming the file, the table, the key,
what was expected and what was found (all problems of the file in one error). A new section is one
dataclass below plus one field of `Pins`; the loader (core/tomltables.py) reads the fields,
nothing else changes.

A profile name is resolved once, at an entry point, by `Pins.profile(name)` into a
`ResolvedProfile` (its source provider and that provider's settings, its model pins, its base-image
Debian archive); everything below the entry points takes that object and never looks a name up.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError
from whisper_release.core.paths import project_root
from whisper_release.core.tomltables import (
    BAD,
    TABLE_NAME,
    Loader,
    describe_expected,
    describe_found,
    keys_matching,
    loaded_as,
    parsed_by,
    table_name,
    toml_key,
)
from whisper_release.layout.artifacts import HPARAM_ORDER
from whisper_release.layout.libraries import CPU_FLOOR

# Quantization types the release can ship: the ones whisper_release.weights.ggml has a codec for
# (weights.quants.CODECS; core sits below weights, so a test keeps the two equal), so that the verification
# suite can check every element of the quantized file against its f16 source.
QUANT_TYPES = ("q4_0", "q5_1", "q8_0")
# [profiles.<name>] debian: which Debian archive the profile's base image is bootstrapped from.
DEBIAN_ARCHIVES = ("mirror", "snapshot")
# [build] cpu_variants: ggml's x86 CPU module names (GGML_CPU_ALL_VARIANTS) the release may ship, the
# floor first. The floor's flags are [build] required_cpu_flags and expected_cpu_variant; every other
# variant adds its own in [build.cpu_variant.<name>].
CPU_VARIANTS = (
    CPU_FLOOR, "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4", "alderlake",
    "sapphirerapids",
)  # fmt: skip
# What a multi-module build adds to [build] cmake_flags (ggml loads one CPU module at run time).
RUNTIME_DISPATCH_FLAGS = ("-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON")


def default_pins_path() -> Path:
    return project_root() / "release.toml"


# ---- the sections ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasePins:
    version: str


@dataclass(frozen=True)
class IndexPins:
    url: str


@dataclass(frozen=True)
class PackageFile:
    """One file of a package on the package index, pinned by name, version, filename and sha256."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int | None = None
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class GithubSource:
    """[source.providers.github]: the tarball of the pinned commit (its bytes are not stable, the
    tree it holds is) and the folder prefix to strip."""

    name: ClassVar[str] = "github"
    url: str
    strip: str


@dataclass(frozen=True)
class SdistSource:
    """[source.providers.pypi-sdist]: a pinned sdist from the package index carrying the tree."""

    name: ClassVar[str] = "pypi-sdist"
    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    size: int | None = None
    license: str | None = None

    @property
    def package_file(self) -> PackageFile:
        return PackageFile(self.package, self.version, self.filename, self.sha256, self.size)


SourceProvider = GithubSource | SdistSource


@dataclass(frozen=True)
class SourceProviders:
    github: GithubSource | None = None
    pypi_sdist: SdistSource | None = field(default=None, metadata=toml_key("pypi-sdist"))

    def available(self) -> dict[str, SourceProvider]:
        found = (getattr(self, f.name) for f in fields(self))
        return {p.name: p for p in found if p is not None}


@dataclass(frozen=True)
class SourcePins:
    name: str
    version: str
    commit: str
    # git tree hash of the whole source tree: verifies whatever provider delivered it.
    tree: str
    providers: SourceProviders
    # For the SBOM: where the commit lives (its purl) and the tree's licence (LICENSE covers ggml too).
    repository: str
    license: str


@dataclass(frozen=True)
class AssetsPins:
    """openai-whisper's sdist and the paths of the converter's mel filters and tokenizers in it."""

    package: str
    version: str
    filename: str
    sha256: str
    mel_filters: str
    tokenizer_en: str
    tokenizer_multilingual: str
    size: int | None = None
    license: str | None = None
    # OpenAI's MIT licence of Whisper (code and weights), shipped as the weights' licence text.
    license_file: str | None = None

    @property
    def package_file(self) -> PackageFile:
        return PackageFile(self.package, self.version, self.filename, self.sha256, self.size)

    @property
    def members(self) -> dict[str, str]:
        """File name in the assets folder -> member path inside the sdist."""
        paths = (self.mel_filters, self.tokenizer_en, self.tokenizer_multilingual)
        return {Path(p).name: p for p in paths}


def _debian_archive(value: Any) -> str:
    if value not in DEBIAN_ARCHIVES:
        raise ValueError(f"one of {', '.join(repr(a) for a in DEBIAN_ARCHIVES)}")
    return str(value)


@dataclass(frozen=True)
class ProfilePins:
    """[profiles.<name>] as written; `Pins.profile(name)` resolves its references."""

    source: str
    models: tuple[str, ...]
    # "mirror": [build] debian_mirror (moves on); "snapshot": [build] debian_snapshot_url at
    # debian_snapshot, so the base image rebuilds alike months later.
    debian: str = field(metadata=parsed_by(_debian_archive))


# The ggml header fields as a table, so the loader names each missing or mistyped one.
_Hparams = make_dataclass("_Hparams", [(k, int) for k in HPARAM_ORDER], frozen=True)


@dataclass(frozen=True)
class ModelPin:
    name: str = field(metadata=TABLE_NAME)
    provider: str  # "official" | "ct2" (inputs.models says what each needs)
    hparams: dict[str, int] = field(metadata=loaded_as(_Hparams, asdict))
    size: int | None = None  # exact f16 ggml size
    url: str | None = None
    sha1: str | None = None
    # exact size of each quantized file the release ships (release.toml `<type>_size`, e.g. q8_0_size)
    quantized_sizes: dict[str, int] = field(
        default_factory=dict, metadata=keys_matching(r"(q[0-9]_[0-9k]+)_size")
    )
    tokenizer: str | None = None  # "en" | "multilingual" (ct2)
    packages: tuple[PackageFile, ...] = ()
    license: str | None = None
    ggml_sha256: str | None = None  # sha256 of the converted f16 file (ct2; conversion is deterministic)

    def quantized_size(self, quant: str) -> int | None:
        return self.quantized_sizes.get(quant)

    @property
    def hparams_tuple(self) -> tuple[int, ...]:
        return tuple(self.hparams[k] for k in HPARAM_ORDER)


@dataclass(frozen=True)
class SamplePins:
    path: str  # inside the verified source tree
    reference: str


def _quantize(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(q, str) and q in QUANT_TYPES for q in items)
        or len(set(items)) != len(items)
    ):
        raise ValueError(
            f"distinct quantization types out of {', '.join(QUANT_TYPES)} (the first is the primary)"
        )
    return tuple(items)


def _cpu_variants(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or value[0] != CPU_FLOOR
        or not all(isinstance(v, str) and v in CPU_VARIANTS for v in value)
        or len(set(value)) != len(value)
    ):
        raise ValueError(f"distinct names out of {', '.join(CPU_VARIANTS)}, {CPU_FLOOR!r} first")
    return tuple(value)


@dataclass(frozen=True)
class CpuVariant:
    """[build.cpu_variant.<name>]: one runtime CPU module above the floor, by what it adds to it: the
    CPU flags (as /proc/cpuinfo spells them) its code may execute, which the ISA audit allows in that
    module only, and the compiler flags cmake must print for it."""

    cpu_flags: tuple[str, ...]
    compile_flags: str


@dataclass(frozen=True)
class ShippedVariant:
    """A CPU module as the build and the layout see it: its whole flag sets (floor included)."""

    name: str
    cpu_flags: tuple[str, ...]
    compile_flags: str


@dataclass(frozen=True)
class BuildPins:
    # Every artifact ships one model file per type, the primary first.
    quantize: tuple[str, ...] = field(metadata=parsed_by(_quantize))
    debian_suite: str
    debian_mirror: str
    debian_snapshot: str
    debian_snapshot_url: str  # "{snapshot}" stands for debian_snapshot
    base_packages: tuple[str, ...]
    cmake_flags: tuple[str, ...]
    required_cpu_flags: tuple[str, ...]
    expected_cpu_variant: str
    source_date_epoch: int
    # The CPU modules shipped, the floor first; ["haswell"] alone is the single-ISA build (the CPU
    # library linked in, nothing loaded at run time).
    cpu_variants: tuple[str, ...] = field(default=(CPU_FLOOR,), metadata=parsed_by(_cpu_variants))
    cpu_variant: dict[str, CpuVariant] = field(default_factory=dict)

    @property
    def runtime_dispatch(self) -> bool:
        """Several CPU modules, one chosen at load time (GGML_BACKEND_DL)."""
        return len(self.cpu_variants) > 1

    @property
    def effective_cmake_flags(self) -> tuple[str, ...]:
        return (*self.cmake_flags, *RUNTIME_DISPATCH_FLAGS) if self.runtime_dispatch else self.cmake_flags

    def variant(self, name: str) -> ShippedVariant:
        """A variant's whole flag sets: the floor's plus its [build.cpu_variant.<name>], shipped or not."""
        extra = self.cpu_variant.get(name, CpuVariant((), ""))
        compile_flags = ";".join(f for f in (self.expected_cpu_variant, extra.compile_flags) if f)
        return ShippedVariant(name, (*self.required_cpu_flags, *extra.cpu_flags), compile_flags)

    def shipped_variants(self) -> tuple[ShippedVariant, ...]:
        return tuple(self.variant(name) for name in self.cpu_variants)


@dataclass(frozen=True)
class VerifyPins:
    # [verify.wer_ceiling.<set>] <model> = ceiling (whisper_release.verify.wer.SETS)
    wer_ceiling: dict[str, dict[str, float]]
    # The seeded percentile bootstrap of the WER intervals and the paired gate (docs/verify.md).
    bootstrap_resamples: int
    bootstrap_seed: int
    # max_<type>_wer_delta_pp, one per [build] quantize type, keyed by the type
    max_wer_delta_pp: dict[str, float] = field(
        default_factory=dict, metadata=keys_matching(r"max_(q[0-9]_[0-9k]+)_wer_delta_pp")
    )


@dataclass(frozen=True)
class PublishPins:
    bucket: str
    prefix: str = ""
    # read by minio/install-minio-client.sh, whose default is the same
    minio_client_suite: str = "sid"


@dataclass(frozen=True)
class SbomTool:
    """[[sbom.tool]]: one pure-Python wheel the organizer stage writes the SBOM with."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int | None = None

    @property
    def package_file(self) -> PackageFile:
        return PackageFile(self.name, self.version, self.filename, self.sha256, self.size)


@dataclass(frozen=True)
class SbomPins:
    """[sbom]: the builder image's Debian packages recorded as inputs (package -> licence
    expression; versions come from dpkg inside the image) and the wheels the SBOM is written with."""

    debian: dict[str, str]
    tool: tuple[SbomTool, ...]


@dataclass(frozen=True)
class BenchReference:
    """[bench.reference.<name>]: the flags of one reference build (never released). Either its own
    cmake_flags and expected_cpu_variant, or release_flags_plus: the release's flags plus these."""

    cmake_flags: tuple[str, ...] | None = None
    expected_cpu_variant: str | None = None
    release_flags_plus: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BenchPins:
    threads: int
    # Models timed with a generated model of their exact shapes (load and encoder cost only).
    generated_models: tuple[str, ...]
    generated_seed: int
    reference: dict[str, BenchReference] = field(default_factory=dict)


@dataclass(frozen=True)
class DebianBase:
    """What a profile's builder base image is bootstrapped from."""

    suite: str
    mirror: str
    packages: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile with its references followed: what the layers below the entry points receive."""

    name: str
    source: SourceProvider
    models: tuple[ModelPin, ...]
    debian: DebianBase

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)


# kw_only: a new section may be added anywhere, with or without a default.
@dataclass(frozen=True, kw_only=True)
class Pins:
    path: Path
    release: ReleasePins
    index: IndexPins
    source: SourcePins
    assets: AssetsPins
    profiles: dict[str, ProfilePins]
    models: dict[str, ModelPin]
    sample: SamplePins
    build: BuildPins
    verify: VerifyPins
    publish: PublishPins
    sbom: SbomPins
    bench: BenchPins
    speech: SpeechPins | None = None
    # The parsed TOML as read (tests re-parse a changed copy); code reads the typed fields.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def release_version(self) -> str:
        return self.release.version

    @property
    def index_url(self) -> str:
        for var in ("WHISPER_RELEASE_INDEX_URL", "PIP_INDEX_URL"):
            url: str | None = settings.get(var)
            if url:
                return url.rstrip("/")
        return self.index.url.rstrip("/")

    @property
    def sbom_tools(self) -> tuple[PackageFile, ...]:
        """The wheels the organizer stage writes the SBOM with ([[sbom.tool]])."""
        return tuple(t.package_file for t in self.sbom.tool)

    def source_provider(self, name: str) -> SourceProvider:
        providers = self.source.providers.available()
        if name not in providers:
            raise ConfigError(
                f"Unknown source provider {name!r} in {self.path}: expected one of "
                f"{', '.join(sorted(providers))}; fix the profile's 'source' key."
            )
        return providers[name]

    def profile(self, name: str) -> ResolvedProfile:
        """The profile `name` resolved: call this once, at the entry point, and pass the result down."""
        if name not in self.profiles:
            raise ConfigError(
                f"Unknown profile {name!r}: expected one of {', '.join(sorted(self.profiles))} "
                f"(defined in {self.path})."
            )
        p = self.profiles[name]
        b = self.build
        mirror = b.debian_mirror
        if p.debian == "snapshot":
            mirror = b.debian_snapshot_url.format(snapshot=b.debian_snapshot)
        return ResolvedProfile(
            name=name,
            source=self.source_provider(p.source),
            models=tuple(self.model(m) for m in p.models),
            debian=DebianBase(b.debian_suite, mirror, tuple(sorted(set(b.base_packages)))),
        )

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.profiles))

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.models)

    def model(self, name: str) -> ModelPin:
        if name not in self.models:
            raise ConfigError(
                f"Unknown model {name!r}: expected one of {', '.join(self.models)} (defined in {self.path})."
            )
        return self.models[name]

    @property
    def quantizations(self) -> tuple[str, ...]:
        """The quantized model types every artifact ships ([build] quantize), the primary first."""
        return self.build.quantize

    @property
    def primary_quantization(self) -> str:
        return self.quantizations[0]


def quantizations(value: object, where: object = "release.toml") -> tuple[str, ...]:
    """[build] quantize as a tuple: a list of ggml types (the first is the primary artifact model,
    the one callers get by default), or one type as a string."""
    try:
        return _quantize(value)
    except ValueError as e:
        raise ConfigError(
            f"[build] quantize in {where} must list {e}, got {value!r}; fix release.toml."
        ) from None


# ---- [speech]: the real human-speech set (whisper_release.inputs.speech, docs/verify.md) ---------
SPEECH_FORMATS = ("wav", "s16le-16k-mono")


def _speech_clip_value(kind: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        ok = isinstance(value, str) and (
            re.fullmatch(r"[0-9a-f]{64}", value) if kind == "sha256" else value in SPEECH_FORMATS
        )
        if not ok:
            raise ValueError(
                "a lowercase hex sha256" if kind == "sha256" else f"one of {', '.join(SPEECH_FORMATS)}"
            )
        return str(value)

    return parse


@dataclass(frozen=True, kw_only=True)
class SpeechClip:
    """[[speech.clips]]: one recording, pinned by the sha256 of the 16 kHz mono WAV handed on."""

    name: str
    member: str  # path inside the package file
    sha256: str = field(metadata=parsed_by(_speech_clip_value("sha256")))
    reference: str
    origin: str
    # "wav" (copied as is) or "s16le-16k-mono" (headerless samples, wrapped in a WAV)
    format: str = field(default="wav", metadata=parsed_by(_speech_clip_value("format")))


@dataclass(frozen=True, kw_only=True)
class SpeechPins:
    """[speech]: recordings of real human speech inside one pinned package file."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int | None = None
    license: str
    origin: str
    clips: tuple[SpeechClip, ...]

    @property
    def package_file(self) -> PackageFile:
        return PackageFile(self.package, self.version, self.filename, self.sha256, self.size)


def _cross_checks(pins: Pins) -> list[str]:
    """What the tables say about each other: each profile names a provider and models that exist."""
    problems = []
    providers = pins.source.providers.available()
    for name, p in pins.profiles.items():
        where = f"[profiles.{table_name((name,))}]"
        if p.source not in providers:
            problems.append(
                f"{where} source must name a table of [source.providers] "
                f"({', '.join(sorted(providers)) or 'none'}), found {describe_found(p.source)}"
            )
        for m in p.models:
            if m not in pins.models:
                problems.append(
                    f"{where} models must name tables of [models] ({', '.join(pins.models)}), "
                    f"found {describe_found(m)}"
                )
    b = pins.build
    for name in b.cpu_variants[1:]:
        if name not in b.cpu_variant:
            problems.append(
                f"[build] cpu_variants lists {name!r} but there is no [build.cpu_variant.{name}] table "
                f"(its cpu_flags and compile_flags beyond the floor)"
            )
    for name, v in b.cpu_variant.items():
        if name not in CPU_VARIANTS or name == CPU_FLOOR:
            problems.append(
                f"[build.cpu_variant.{name}] names no ggml CPU module above the floor "
                f"(expected one of {', '.join(CPU_VARIANTS[1:])})"
            )
        elif not v.cpu_flags or not v.compile_flags:
            problems.append(f"[build.cpu_variant.{name}] must add cpu_flags and compile_flags to the floor's")
    try:
        b.debian_snapshot_url.format(snapshot=b.debian_snapshot)
    except (KeyError, IndexError, ValueError):
        problems.append(
            f"[build] debian_snapshot_url must be a URL with {{snapshot}} as its only placeholder, "
            f"found {describe_found(b.debian_snapshot_url)}"
        )
    return problems


def parse_pins(raw: dict[str, Any], path: Path) -> Pins:
    """Pins from a parsed pins file; ConfigError naming every missing, mistyped or unknown key."""
    loader = Loader()
    top = dict(raw)
    sections: dict[str, Any] = {}
    hints = get_type_hints(Pins)
    for f in fields(Pins):
        if f.name in ("path", "raw"):
            continue
        if f.name not in top:
            if f.default is MISSING and f.default_factory is MISSING:
                loader.problems.append(f"lacks the [{f.name}] table ({describe_expected(hints[f.name])})")
            continue
        sections[f.name] = loader.value(hints[f.name], top.pop(f.name), (), f.name)
    for key in top:
        loader.problems.append(
            f"has an unknown table [{key}] (expected only: "
            f"{', '.join(f.name for f in fields(Pins) if f.name not in ('path', 'raw'))})"
        )
    problems = loader.problems
    if not problems and BAD not in sections.values():
        pins = Pins(path=path, raw=raw, **sections)
        problems = _cross_checks(pins)
        if not problems:
            return pins
    if len(problems) == 1:
        raise ConfigError(f"Pins file {path}: {problems[0]}; fix release.toml.")
    raise ConfigError(
        f"Pins file {path} has {len(problems)} problems: {'; '.join(problems)}; fix release.toml."
    )


def load_pins(path: str | os.PathLike[str] | None = None) -> Pins:
    """Parse and check release.toml; a broken file is a ConfigError naming the file and each bad key."""
    p = Path(path) if path else default_pins_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"Pins file {p} does not exist: run from the repository root or set WHISPER_RELEASE_ROOT."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Pins file {p} is not valid TOML ({e}); fix the syntax.") from None
    return parse_pins(raw, p)
