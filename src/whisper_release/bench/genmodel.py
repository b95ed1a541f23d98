"""Generated models: the exact hparams, tensor names, shapes and types of a real Whisper model,
filled with seeded random weights ("random weights": they transcribe nothing).

They let the benchmark measure load and encoder cost at real size where real weights are not
reachable (small, medium offline). The header uses openai-whisper's real mel filters and tokenizer,
so an f16 file has exactly the official file's size (release.toml [models.<name>] size) and a
q5_1 file exactly whisper-quantize's (q5_1_size): weights.quants.q5_1_encode is bit-identical to ggml's
reference quantizer, and the per-tensor types follow whisper-quantize's rules.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.core.pins import HPARAM_ORDER, Pins, load_pins
from whisper_release.inputs.cache import cache_root
from whisper_release.inputs.fetch import fetch_assets
from whisper_release.weights import convert, ggml

LABEL = "random weights"
# Bump when the way weights are drawn changes, so cached files of the old recipe are not reused.
RECIPE_VERSION = "1"
QTYPES = {"f16": None, "q5_1": ggml.GGML_TYPE_Q5_1}
# Real Whisper weights have a standard deviation of a few hundredths; the scale only keeps the
# encoder's activations finite (no NaN slow paths), it does not imitate a trained model.
WEIGHT_SCALE = 0.02


@dataclass(frozen=True)
class GeneratedModel:
    path: Path
    name: str
    quant: str
    size: int
    seed: int
    label: str = LABEL


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed, so a tensor's values do not depend on which tensors come before it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def random_tensors(
    hparams: Mapping[str, int], seed: int, quant: str = "f16"
) -> Iterator[tuple[str, int, np.ndarray]]:
    """(name, ttype, array) for every tensor whisper.cpp loads, one at a time (medium's token
    embedding alone is 200 MB as float32: never hold more than one)."""
    if quant not in QTYPES:
        raise ConfigError(
            f"Unknown quantisation {quant!r} for a generated model; expected one of {sorted(QTYPES)}."
        )
    qtype = QTYPES[quant]
    for name, (ttype, shape) in ggml.expected_inventory(hparams, qtype is not None, qtype or 0).items():
        rng = np.random.default_rng(tensor_seed(seed, name))
        arr = rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(WEIGHT_SCALE)
        yield name, ttype, arr


def write_generated(
    path: str | os.PathLike[str],
    hparams: Mapping[str, int],
    mel: np.ndarray,
    vocab: Sequence[bytes],
    *,
    seed: int,
    quant: str = "f16",
) -> ggml.WrittenModel:
    """Write a generated model atomically (ggml.write_model streams tensor by tensor)."""
    missing = [k for k in HPARAM_ORDER if k not in hparams]
    if missing:
        raise ConfigError(f"hparams for a generated model lack {missing}; give all of {list(HPARAM_ORDER)}.")
    h = dict(hparams)
    qtype = QTYPES.get(quant)
    h["ftype"] = ggml.ftype_for(qtype) if qtype is not None else int(hparams.get("ftype", 1))
    return ggml.write_model(path, h, mel, vocab, random_tensors(h, seed, quant))


def cache_key(name: str, hparams: Mapping[str, int], seed: int, quant: str) -> str:
    doc = json.dumps([RECIPE_VERSION, name, [int(hparams[k]) for k in HPARAM_ORDER], seed, quant])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def expected_size(pins: Pins, name: str, quant: str) -> int | None:
    pin = pins.model(name)
    return pin.size if quant == "f16" else pin.quantized_size(quant)


def generated_model(
    name: str, quant: str = "q5_1", *, pins: Pins | None = None, cache_dir: Path | None = None
) -> GeneratedModel:
    """The generated model of pinned model `name` in the cache (made on first use, ~1 min for
    medium), checked against the pinned exact file size when release.toml has one."""
    pins = pins or load_pins()
    pin = pins.model(name)
    seed = pins.bench.generated_seed
    cache_dir = cache_dir or cache_root() / "bench" / "generated"
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"ggml-{name}-{quant}-random-{cache_key(name, pin.hparams, seed, quant)}.bin"
    want = expected_size(pins, name, quant)
    if not path.is_file():
        assets = fetch_assets(pins)
        mel = convert.load_mel_filters(assets, pin.hparams["n_mels"])
        tokenizer = pin.tokenizer or convert.tokenizer_for(pin.hparams["n_vocab"])
        vocab = convert.load_tiktoken_vocab(assets / convert.TOKENIZER_FILES[tokenizer])
        write_generated(path, pin.hparams, mel, vocab, seed=seed, quant=quant)
    size = path.stat().st_size
    if want is not None and size != want:
        path.unlink()
        raise VerificationError(
            f"The generated {quant} model {path.name} has {size} bytes, the real {name} has {want}; "
            f"its shapes do not match the pinned hparams, so it was removed: "
            f"check release.toml [models.{name}]."
        )
    return GeneratedModel(path, name, quant, size, seed)
