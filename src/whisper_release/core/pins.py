"""Read release.toml (the one pins file) into typed, validated objects.

Everything else asks this module for pins; nothing else parses release.toml.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_release.core.errors import ConfigError

HPARAM_ORDER = (
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
    "ftype",
)
# Quantization types the release can ship: the ones whisper_release.weights.ggml decodes, so that the
# verification suite can check every element of the quantized file against its f16 source.
QUANT_TYPES = ("q5_1", "q8_0")


def project_root() -> Path:
    """The repository root: $WHISPER_RELEASE_ROOT, else the folder holding release.toml above here."""
    env = os.environ.get("WHISPER_RELEASE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "release.toml").is_file():
            return parent
    return Path.cwd().resolve()


def default_pins_path() -> Path:
    return project_root() / "release.toml"


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
class ModelPin:
    name: str
    provider: str  # "official" | "ct2"
    hparams: dict[str, int]
    size: int | None = None  # exact f16 ggml size
    url: str | None = None
    sha1: str | None = None
    # exact size of each quantized file the release ships (release.toml `<type>_size`, e.g. q8_0_size)
    quantized_sizes: dict[str, int] = field(default_factory=dict)
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
class Profile:
    name: str
    source: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Pins:
    path: Path
    raw: dict[str, Any] = field(repr=False)

    # ---- accessors --------------------------------------------------------------------
    @property
    def release_version(self) -> str:
        return str(self.raw["release"]["version"])

    @property
    def index_url(self) -> str:
        for var in ("WHISPER_RELEASE_INDEX_URL", "PIP_INDEX_URL"):
            if os.environ.get(var):
                return os.environ[var].rstrip("/")
        return str(self.raw["index"]["url"]).rstrip("/")

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.raw["source"])

    def source_provider(self, name: str) -> dict[str, Any]:
        providers = self.raw["source"]["providers"]
        if name not in providers:
            raise ConfigError(
                f"Unknown source provider {name!r} in {self.path}: expected one of "
                f"{', '.join(sorted(providers))}; fix the profile's 'source' key."
            )
        return dict(providers[name])

    @property
    def assets(self) -> PackageFile:
        a = self.raw["assets"]
        return PackageFile(a["package"], a["version"], a["filename"], a["sha256"], a.get("size"))

    @property
    def assets_raw(self) -> dict[str, Any]:
        return dict(self.raw["assets"])

    def profile(self, name: str) -> Profile:
        profiles = self.raw["profiles"]
        if name not in profiles:
            raise ConfigError(
                f"Unknown profile {name!r}: expected one of {', '.join(sorted(profiles))} "
                f"(defined in {self.path})."
            )
        p = profiles[name]
        return Profile(name, p["source"], tuple(p["models"]))

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.raw["profiles"]))

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.raw["models"])

    def model(self, name: str) -> ModelPin:
        models = self.raw["models"]
        if name not in models:
            raise ConfigError(
                f"Unknown model {name!r}: expected one of {', '.join(models)} (defined in {self.path})."
            )
        m = models[name]
        packages = tuple(
            PackageFile(
                p["name"], p["version"], p["filename"], p["sha256"], p.get("size"),
                tuple(p.get("members", ())),
            )
            for p in m.get("packages", ())
        )
        return ModelPin(
            name=name,
            provider=m["provider"],
            hparams={k: int(m["hparams"][k]) for k in HPARAM_ORDER},
            size=m.get("size"),
            url=m.get("url"),
            sha1=m.get("sha1"),
            quantized_sizes={k.removesuffix("_size"): int(v) for k, v in m.items()
                             if re.fullmatch(r"q[0-9]_[0-9k]+_size", k)},  # fmt: skip
            tokenizer=m.get("tokenizer"),
            packages=packages,
            license=m.get("license"),
            ggml_sha256=m.get("ggml_sha256"),
        )

    @property
    def sample(self) -> dict[str, str]:
        return dict(self.raw["sample"])

    @property
    def build(self) -> dict[str, Any]:
        return dict(self.raw["build"])

    @property
    def quantizations(self) -> tuple[str, ...]:
        """The quantized model types every artifact ships ([build] quantize), the primary first."""
        return quantizations(self.raw["build"].get("quantize"), self.path)

    @property
    def primary_quantization(self) -> str:
        return self.quantizations[0]

    @property
    def verify(self) -> dict[str, Any]:
        return dict(self.raw["verify"])

    @property
    def publish(self) -> dict[str, Any]:
        return dict(self.raw["publish"])

    @property
    def speech(self) -> SpeechPins | None:
        return speech_pins(self.raw, self.path)


def quantizations(value: object, where: object = "release.toml") -> tuple[str, ...]:
    """[build] quantize as a tuple: a list of ggml types (the first is the primary artifact model,
    the one callers get by default), or one type as a string."""
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(q, str) and q in QUANT_TYPES for q in items)
        or len(set(items)) != len(items)
    ):
        raise ConfigError(
            f"[build] quantize in {where} must list distinct quantization types out of "
            f"{', '.join(QUANT_TYPES)} (the first is the primary), got {value!r}; fix release.toml."
        )
    return tuple(items)


def load_pins(path: str | os.PathLike[str] | None = None) -> Pins:
    """Parse and sanity-check release.toml; a broken file is a ConfigError naming the file."""
    p = Path(path) if path else default_pins_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"Pins file {p} does not exist: run from the repository root or set WHISPER_RELEASE_ROOT."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Pins file {p} is not valid TOML ({e}); fix the syntax.") from None
    for section in ("release", "index", "source", "assets", "profiles", "models", "sample", "build"):
        if section not in raw:
            raise ConfigError(f"Pins file {p} lacks the [{section}] table; restore it from git.")
    pins = Pins(p, raw)
    for prof in raw["profiles"]:
        for m in pins.profile(prof).models:
            pins.model(m)  # raises on an unknown model
    quantizations(raw["build"].get("quantize"), p)  # a bad [build] quantize fails here, not mid-build
    return pins


# ---- [speech]: the real human-speech set (whisper_release.inputs.speech, docs/verify.md) ---------


@dataclass(frozen=True)
class SpeechPins:
    """[speech]: recordings of real human speech inside one pinned package file, each extracted
    clip pinned by the sha256 of the 16 kHz mono WAV handed on, with its reference text."""

    @dataclass(frozen=True)
    class Clip:
        name: str
        member: str  # path inside the package file
        format: str  # "wav" (copied as is) or "s16le-16k-mono" (headerless samples, wrapped in a WAV)
        sha256: str  # of the WAV handed on
        reference: str
        origin: str

    FORMATS = ("wav", "s16le-16k-mono")

    package: PackageFile
    license: str
    origin: str
    clips: tuple[Clip, ...]


def speech_pins(raw: dict[str, Any], where: object = "release.toml") -> SpeechPins | None:
    """The typed [speech] table, or None when release.toml has none; a malformed one is a ConfigError."""
    sp = raw.get("speech")
    if sp is None:
        return None
    need = ("package", "version", "filename", "sha256", "license", "origin", "clips")
    missing = [k for k in need if k not in sp]
    if missing or not isinstance(sp.get("clips"), list) or not sp["clips"]:
        raise ConfigError(
            f"[speech] in {where} must have {', '.join(need)} (clips: a non-empty list of "
            f"[[speech.clips]]), got keys {', '.join(sorted(sp)) or 'none'}; restore it from git."
        )
    rows = []
    for i, c in enumerate(sp["clips"]):
        fmt = c.get("format", "wav")
        if (
            not all(isinstance(c.get(k), str) and c[k].strip() for k in ("name", "member", "reference"))
            or not re.fullmatch(r"[0-9a-f]{64}", str(c.get("sha256", "")))
            or fmt not in SpeechPins.FORMATS
        ):
            raise ConfigError(
                f"[[speech.clips]] #{i + 1} ({c.get('name', '?')}) in {where} needs name, member, a "
                f"lowercase hex sha256, a non-empty reference and format one of "
                f"{', '.join(SpeechPins.FORMATS)}, got {c!r}; fix release.toml."
            )
        rows.append(
            SpeechPins.Clip(
                c["name"], c["member"], fmt, c["sha256"], c["reference"], str(c.get("origin", sp["origin"]))
            )
        )
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"[[speech.clips]] in {where} repeats a name ({', '.join(names)}); make each unique."
        )
    pkg = PackageFile(sp["package"], sp["version"], sp["filename"], sp["sha256"], sp.get("size"))
    return SpeechPins(pkg, str(sp["license"]), str(sp["origin"]), tuple(rows))
