"""Where a release is published: the configured S3 store, else the embedded one, with release.toml's
[publish] bucket and prefix as defaults (the publisher's pins; the s3 layer reads none)."""

from __future__ import annotations

import os

from whisper_release.core.pins import Pins, load_pins
from whisper_release.s3.config import S3Config, load_config
from whisper_release.s3.store import EmbeddedStore


def publish_defaults(pins: Pins) -> dict[str, str]:
    pub = pins.publish
    return {"bucket": pub.bucket, "prefix": pub.prefix}


def publish_config(*, config_file: str | os.PathLike[str] | None = None, endpoint: str | None = None,
                   bucket: str | None = None, prefix: str | None = None,
                   store_root: str | os.PathLike[str] | None = None, dry_run: bool = False,
                   pins: Pins | None = None) -> S3Config:
    """The configured endpoint, else the embedded store (started on demand; not started on dry runs)."""
    defaults = publish_defaults(pins or load_pins())
    cfg = load_config(config_file=config_file, endpoint=endpoint, bucket=bucket, prefix=prefix,
                      defaults=defaults, defaults_origin="release.toml [publish]")
    if cfg is not None:
        return cfg
    store = EmbeddedStore(store_root, bucket=bucket or defaults["bucket"],
                          prefix=prefix if prefix is not None else defaults["prefix"])
    return store.planned_config() if dry_run else store.start()
