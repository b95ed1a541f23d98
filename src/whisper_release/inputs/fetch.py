"""`invoke fetch`: every input of a profile, each proven against release.toml, from the cache.

A warm cache answers without any network I/O: a cached item is trusted only through its marker
(written last) and, for models, a re-hash; the package index is asked for a URL only when a file
really has to be downloaded.
"""

from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import (
    ModelPin,
    PackageFile,
    Pins,
    ResolvedProfile,
    SdistSource,
    SourceProvider,
    load_pins,
)
from whisper_release.inputs import index
from whisper_release.inputs.cache import Cache
from whisper_release.inputs.download import RetryPolicy, download
from whisper_release.inputs.models import cached_model, fetch_model_file, ggml_sha256_pin, model_key
from whisper_release.inputs.sources import SOURCE_DIR_NAME, cached_source, fetch_source_tree, source_key
from whisper_release.inputs.speech import cached_speech, fetch_speech_set, speech_key
from whisper_release.layout.artifacts import sha256_file
from whisper_release.weights.convert import ASSETS_ENV, ConvertResult, convert_ct2_dir


@dataclass(frozen=True)
class Record:
    """One verified input: what it is, who delivered it, what pinned it, and what this run did."""

    item: str
    provider: str
    pin: str
    size: int | None
    status: str  # cached | downloaded | converted | would download | would convert
    path: str
    sha256: str | None = None
    # What this run computed from the bytes it hands on (not the pin): "tree <git tree hash>" for
    # the source, "sha256 <hex>" for files; None only on dry runs.
    verified: str | None = None


@dataclass
class FetchResult:
    profile: str
    source_dir: Path
    models: dict[str, Path]
    sample: Path
    records: list[Record] = field(default_factory=list)
    dry_run: bool = False
    _provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    speech: Path | None = None  # the verified real-speech set ([speech]); None when not pinned

    def provenance(self) -> dict[str, Any]:
        """What the build manifest records about the inputs (no local paths)."""
        return {
            "profile": self.profile,
            **self._provenance,
            "records": [{k: v for k, v in asdict(r).items() if k != "path"} for r in self.records],
        }


class _Fetcher:
    """One fetch run: the pins, the cache, the retry policy, and the records it collects."""

    def __init__(self, pins: Pins, cache: Cache | None = None, dry_run: bool = False) -> None:
        self.pins = pins
        self.cache = cache or Cache()
        self.dry_run = dry_run
        self.policy = RetryPolicy.from_env()
        self.records: list[Record] = []
        self._seen: set[str] = set()
        self.verified_tree: str | None = None

    def _record(self, rec: Record) -> None:
        if rec.item not in self._seen:
            self._seen.add(rec.item)
            self.records.append(rec)

    # ---- package files ---------------------------------------------------------------------
    def package_file(self, pkg: PackageFile) -> Path:
        label = f"{pkg.name} {pkg.version}"
        pin = f"sha256 {pkg.sha256[:12]}"
        hit = self.cache.has_blob("sha256", pkg.sha256, pkg.size)  # re-hashed on every use
        if hit is not None:
            self._record(Record(label, "index", pin, hit.stat().st_size, "cached", str(hit), pkg.sha256,
                                f"sha256 {pkg.sha256}"))
            return hit
        dest = self.cache.blob_path("sha256", pkg.sha256)
        if self.dry_run:
            self._record(Record(label, "index", pin, pkg.size, "would download", str(dest), pkg.sha256))
            return dest
        url = index.resolve(self.pins.index_url, pkg, self.policy)
        download(url, dest, what=pkg.filename, size=pkg.size, sha256=pkg.sha256, policy=self.policy)
        self._record(Record(label, "index", pin, dest.stat().st_size, "downloaded", str(dest), pkg.sha256,
                            f"sha256 {pkg.sha256}"))
        return dest

    # ---- assets ----------------------------------------------------------------------------
    def assets(self) -> Path:
        self.cache.use("assets", self.pins.assets.package_file.sha256)
        return self._assets()

    def _assets(self) -> Path:
        pkg = self.pins.assets.package_file
        members = self.pins.assets.members
        key = pkg.sha256
        item = self.cache.has_item("assets", key, {"sdist_sha256": key})
        if item is not None:
            marker = self.cache.read_marker(item) or {}
            recorded = marker.get("files", {})
            if all((item / n).is_file() and sha256_file(item / n) == recorded.get(n) for n in members):
                self._record(
                    Record(
                        f"assets ({pkg.name} {pkg.version})",
                        "index",
                        f"sha256 {key[:12]}",
                        None,
                        "cached",
                        str(item),
                    )
                )
                return item
            self.cache.discard("assets", key)
        if self.dry_run:
            self.package_file(pkg)
            return self.cache.item_path("assets", key)
        sdist = self.package_file(pkg)
        with self.cache.tmp_dir("assets") as staging:
            files: dict[str, str] = {}
            try:
                with tarfile.open(sdist, "r:*") as tf:
                    for name, member in members.items():
                        try:
                            src = tf.extractfile(member)
                        except KeyError:
                            src = None
                        if src is None:
                            raise VerificationError(
                                f"{pkg.filename} has no regular file {member!r}; "
                                f"check [assets] in release.toml."
                            )
                        (staging / name).write_bytes(src.read())
                        files[name] = sha256_file(staging / name)
            except tarfile.TarError as e:
                raise VerificationError(f"{pkg.filename} cannot be read as a tar archive ({e}).") from None
            item = self.cache.commit_item(staging, "assets", key, {"sdist_sha256": key, "files": files})
        return item

    # ---- source ----------------------------------------------------------------------------
    def source(self, provider: SourceProvider) -> Path:
        self.cache.use("source", source_key(self.pins))
        return self._source(provider)

    def _source(self, provider: SourceProvider) -> Path:
        tree = source_key(self.pins)
        label = f"{self.pins.source.name} {self.pins.source.version} source"
        pin = f"tree {tree[:12]}"
        hit = cached_source(self.cache, self.pins)
        if hit is not None:
            path, got = hit
            self.verified_tree = got
            self._record(
                Record(label, provider.name, pin, None, "cached", str(path), verified=f"tree {got}")
            )
            return path
        if self.dry_run:
            if isinstance(provider, SdistSource):
                self.package_file(provider.package_file)
            self._record(Record(label, provider.name, pin, None, "would download", ""))
            return self.cache.item_path("source", tree) / SOURCE_DIR_NAME
        path, marker = fetch_source_tree(
            self.cache, self.pins, provider, fetch_package_file=self.package_file, policy=self.policy
        )
        self.verified_tree = str(marker["tree"])
        self._record(
            Record(label, provider.name, pin, None, "downloaded", str(path),
                   verified=f"tree {marker['tree']}")
        )
        return path

    # ---- models ----------------------------------------------------------------------------
    def model(self, pin: ModelPin) -> Path:
        self.cache.use("model", model_key(self.pins, pin))
        return self._model(pin)

    def _model(self, pin: ModelPin) -> Path:
        key = model_key(self.pins, pin)
        label = f"model {pin.name} (ggml f16)"
        if pin.provider == "official" and pin.sha1:
            pin_text = f"sha1 {pin.sha1[:12]}"
        elif ggml_sha256_pin(self.pins, pin):
            pin_text = f"sha256 {ggml_sha256_pin(self.pins, pin)[:12]}"  # type: ignore[index]
        else:
            pin_text = "hparams, inventory"
        hit = cached_model(self.cache, self.pins, pin, rehash=not self.dry_run)
        if hit is not None:
            path, marker = hit
            self._record(
                Record(
                    label,
                    pin.provider,
                    pin_text,
                    marker.get("size"),
                    "cached",
                    str(path),
                    marker.get("sha256"),
                    None if self.dry_run else f"sha256 {marker.get('sha256')}",
                )
            )
            return path
        if self.dry_run:
            status = "would download" if pin.provider == "official" else "would convert"
            if pin.provider == "ct2":
                for pkg in pin.packages:
                    self.package_file(pkg)
                self.assets()
            self._record(Record(label, pin.provider, pin_text, pin.size, status, ""))
            return self.cache.item_path("model", key)
        path, marker = fetch_model_file(
            self.cache,
            self.pins,
            pin,
            fetch_package_file=self.package_file,
            fetch_assets=self.assets,
            policy=self.policy,
        )
        status = "downloaded" if pin.provider == "official" else "converted"
        self._record(
            Record(label, pin.provider, pin_text, marker["size"], status, str(path), marker["sha256"],
                   f"sha256 {marker['sha256']}")
        )
        return path

    # ---- real speech ([speech]) -------------------------------------------------------------
    def speech(self) -> Path | None:
        sp = self.pins.speech
        if sp is None:
            return None
        label = f"speech set ({sp.package} {sp.version}, {len(sp.clips)} clips)"
        pin = f"sha256 x{len(sp.clips)}"
        # Every clip is re-hashed against its pin on each use, so what was verified is the pins.
        verified = f"sha256 of {len(sp.clips)} clips == [[speech.clips]] sha256"
        self.cache.use("speech", speech_key(sp))
        hit = cached_speech(self.cache, sp)
        if hit is not None:
            self._record(Record(label, "index", pin, None, "cached", str(hit), None, verified))
            return hit
        if self.dry_run:
            self.package_file(sp.package_file)
            self._record(Record(label, "index", pin, None, "would extract", ""))
            return self.cache.item_path("speech", speech_key(sp))
        path = fetch_speech_set(self.cache, sp, self.package_file)
        self._record(Record(label, "index", pin, None, "extracted", str(path), None, verified))
        return path


# ---- the contract (docs/contracts.md) --------------------------------------------------------


def fetch_package_file(pins: Pins, pkg: PackageFile) -> Path:
    """A pinned package file, verified, in the cache."""
    return _Fetcher(pins).package_file(pkg)


def fetch_assets(pins: Pins) -> Path:
    """Directory holding mel_filters.npz, gpt2.tiktoken and multilingual.tiktoken."""
    return _Fetcher(pins).assets()


def convert_dir(
    src_dir: str | os.PathLike[str], dst: str | os.PathLike[str], tokenizer: str | None = None
) -> ConvertResult:
    """`convert --from DIR --to FILE`: the assets from $WHISPER_RELEASE_ASSETS, else fetched and verified."""

    assets = settings.get(ASSETS_ENV) or fetch_assets(load_pins())
    return convert_ct2_dir(src_dir, dst, tokenizer=tokenizer, assets_dir=assets)


def fetch_source(pins: Pins, provider: SourceProvider) -> Path:
    """The verified whisper.cpp tree (read-only files) in the cache, delivered by `provider`
    (a profile's `source`, or `pins.source_provider(name)`)."""
    return _Fetcher(pins).source(provider)


def fetch_model(pins: Pins, name: str) -> Path:
    """The verified ggml f16 model file in the cache."""
    return _Fetcher(pins).model(pins.model(name))  # unknown model -> ConfigError


def fetch_speech(pins: Pins) -> Path:
    """The verified real-speech set ([speech]): one <name>.wav per pinned clip, in the cache."""
    path = _Fetcher(pins).speech()
    if path is None:
        raise ConfigError(
            f"{pins.path} has no [speech] table, the pinned real-speech set the WER gates need; "
            f"restore it from git."
        )
    return path


# The provider settings the build manifest records (by TOML key; local paths and licences stay out).
_PROVENANCE_KEYS = ("url", "package", "version", "filename", "sha256")


def fetch_profile(profile: ResolvedProfile, pins: Pins, *, dry_run: bool = False) -> FetchResult:
    """Every input of `profile`: the source tree, its models, the sample audio and the real-speech
    set ([speech], when pinned), each verified."""
    for pin in profile.models:
        model_key(pins, pin)  # refuse a broken model pin before any download
    f = _Fetcher(pins, dry_run=dry_run)
    source_dir = f.source(profile.source)
    models = {pin.name: f.model(pin) for pin in profile.models}
    speech = f.speech()
    sample = source_dir / pins.sample.path
    if not dry_run and not sample.is_file():
        raise VerificationError(
            f"The sample audio {pins.sample.path} is missing from the verified source tree {source_dir}; "
            f"fix [sample] path in release.toml."
        )
    src = pins.source
    settings = asdict(profile.source)
    prov: dict[str, Any] = {
        "source": {
            "name": src.name,
            "version": src.version,
            "commit": src.commit,
            # The hash computed from the tree this run hands on (equal to the pin, or fetch failed).
            "tree": f.verified_tree if f.verified_tree is not None else src.tree,
            "provider": profile.source.name,
            **{k: settings[k] for k in _PROVENANCE_KEYS if settings.get(k) is not None},
        },
        "models": {},
        "sample": {"path": pins.sample.path, "sha256": None if dry_run else sha256_file(sample)},
    }
    for pin in profile.models:
        name = pin.name
        rec = next(r for r in f.records if r.item == f"model {name} (ggml f16)")
        prov["models"][name] = {
            "provider": pin.provider,
            "file": f"ggml-{name}.bin",
            "size": rec.size,
            "sha256": rec.sha256,
            "hparams": pin.hparams,
            **(
                {"url": pin.url, "sha1": pin.sha1}
                if pin.provider == "official"
                else {
                    "packages": [
                        {"name": p.name, "version": p.version, "sha256": p.sha256} for p in pin.packages
                    ]
                }
            ),
        }
    return FetchResult(profile.name, source_dir, models, sample, f.records, dry_run, prov, speech=speech)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def print_report(result: FetchResult, file: Any = None) -> None:
    """A table of what was verified, then where the inputs are."""
    out = file or sys.stdout
    head = ("item", "provider", "pin", "size", "status")
    rows = [(r.item, r.provider, r.pin, _human(r.size), r.status) for r in result.records]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    title = f"fetch --profile {result.profile}" + (" (dry run: nothing downloaded)" if result.dry_run else "")
    print(title, file=out)
    for row in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if not result.dry_run:
        print(f"source: {result.source_dir}", file=out)
        for name, path in result.models.items():
            print(f"model {name}: {path}", file=out)
        print(f"sample: {result.sample}", file=out)
        if result.speech is not None:
            print(f"speech: {result.speech}", file=out)
