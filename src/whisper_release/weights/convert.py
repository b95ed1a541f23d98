"""CTranslate2 (faster-whisper) Whisper weights -> whisper.cpp ggml f16 file.

Produces what whisper.cpp's models/convert-pt-to-ggml.py produces from OpenAI's checkpoint: the same
header, openai-whisper's mel filters and tiktoken vocabulary, the same tensor names, order and
types (f32 for 1-D tensors, conv biases and positional embeddings; f16 for the rest). CTranslate2
fuses the attention projections, so they are split back here.

Every expected tensor is checked (present, right shape) before a byte is written; the file is
written to a temp name, re-read and checked against ggml.expected_inventory, then renamed.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_release.core.console import info
from whisper_release.core.errors import ConversionError, VerificationError
from whisper_release.weights import ct2, ggml

MEL_FILTERS = "mel_filters.npz"
TOKENIZER_FILES = {"en": "gpt2.tiktoken", "multilingual": "multilingual.tiktoken"}
# Assets dir for offline work and tests; the default is the verified copy fetch.fetch_assets makes.
ASSETS_ENV = "WHISPER_RELEASE_ASSETS"

# CTranslate2 variables whisper.cpp has no use for: converter options and metadata scalars
# (whisper.cpp derives heads from hparams and alignment heads from the model name).
_UNUSED_SCALARS = {
    "activation",
    "alibi",
    "alignment_heads",
    "alignment_layer",
    "num_heads",
    "pre_norm",
    "scale_embeddings",
    "start_from_zero_embedding",
    "scale_outputs",
    "layernorm_embedding",
    "multi_query",
    "rotary_dim",
    "rotary_interleave",
}


@dataclass(frozen=True)
class _Src:
    """Where a whisper.cpp tensor comes from: a CT2 variable, optionally one of `parts` equal
    slices along its first axis (the fused projections)."""

    var: str
    part: int = 0
    parts: int = 1
    as_column: bool = False  # conv bias: [n] -> [n, 1], as convert-pt-to-ggml.py does


def _layer_plan(ggml_prefix: str, ct2_prefix: str, decoder: bool) -> dict[str, _Src]:
    g, c = ggml_prefix, ct2_prefix
    sa = f"{c}/self_attention"
    plan = {
        # linear_0 of self-attention is q, k, v stacked. The key bias CTranslate2 stores (zeros
        # for Whisper) is dropped: whisper.cpp has none, and a key bias only adds the same q.b_k
        # to every logit of a query, which softmax cancels.
        f"{g}.attn.query.weight": _Src(f"{sa}/linear_0/weight", 0, 3),
        f"{g}.attn.query.bias": _Src(f"{sa}/linear_0/bias", 0, 3),
        f"{g}.attn.key.weight": _Src(f"{sa}/linear_0/weight", 1, 3),
        f"{g}.attn.value.weight": _Src(f"{sa}/linear_0/weight", 2, 3),
        f"{g}.attn.value.bias": _Src(f"{sa}/linear_0/bias", 2, 3),
        f"{g}.attn.out.weight": _Src(f"{sa}/linear_1/weight"),
        f"{g}.attn.out.bias": _Src(f"{sa}/linear_1/bias"),
        f"{g}.attn_ln.weight": _Src(f"{sa}/layer_norm/gamma"),
        f"{g}.attn_ln.bias": _Src(f"{sa}/layer_norm/beta"),
        f"{g}.mlp.0.weight": _Src(f"{c}/ffn/linear_0/weight"),
        f"{g}.mlp.0.bias": _Src(f"{c}/ffn/linear_0/bias"),
        f"{g}.mlp.2.weight": _Src(f"{c}/ffn/linear_1/weight"),
        f"{g}.mlp.2.bias": _Src(f"{c}/ffn/linear_1/bias"),
        f"{g}.mlp_ln.weight": _Src(f"{c}/ffn/layer_norm/gamma"),
        f"{g}.mlp_ln.bias": _Src(f"{c}/ffn/layer_norm/beta"),
    }
    if decoder:
        ca = f"{c}/attention"
        plan.update({
            f"{g}.cross_attn.query.weight": _Src(f"{ca}/linear_0/weight"),
            f"{g}.cross_attn.query.bias": _Src(f"{ca}/linear_0/bias"),
            # linear_1 is k, v stacked (same key-bias reasoning as above).
            f"{g}.cross_attn.key.weight": _Src(f"{ca}/linear_1/weight", 0, 2),
            f"{g}.cross_attn.value.weight": _Src(f"{ca}/linear_1/weight", 1, 2),
            f"{g}.cross_attn.value.bias": _Src(f"{ca}/linear_1/bias", 1, 2),
            f"{g}.cross_attn.out.weight": _Src(f"{ca}/linear_2/weight"),
            f"{g}.cross_attn.out.bias": _Src(f"{ca}/linear_2/bias"),
            f"{g}.cross_attn_ln.weight": _Src(f"{ca}/layer_norm/gamma"),
            f"{g}.cross_attn_ln.bias": _Src(f"{ca}/layer_norm/beta"),
        })
    return plan


def tensor_plan(n_audio_layer: int, n_text_layer: int) -> dict[str, _Src]:
    """whisper.cpp tensor name -> CTranslate2 source (FACTS.md's name map)."""
    plan = {
        "encoder.positional_embedding": _Src("encoder/position_encodings/encodings"),
        "encoder.conv1.weight": _Src("encoder/conv1/weight"),
        "encoder.conv1.bias": _Src("encoder/conv1/bias", as_column=True),
        "encoder.conv2.weight": _Src("encoder/conv2/weight"),
        "encoder.conv2.bias": _Src("encoder/conv2/bias", as_column=True),
        "encoder.ln_post.weight": _Src("encoder/layer_norm/gamma"),
        "encoder.ln_post.bias": _Src("encoder/layer_norm/beta"),
        "decoder.positional_embedding": _Src("decoder/position_encodings/encodings"),
        "decoder.token_embedding.weight": _Src("decoder/embeddings/weight"),
        "decoder.ln.weight": _Src("decoder/layer_norm/gamma"),
        "decoder.ln.bias": _Src("decoder/layer_norm/beta"),
    }
    for i in range(n_audio_layer):
        plan.update(_layer_plan(f"encoder.blocks.{i}", f"encoder/layer_{i}", decoder=False))
    for i in range(n_text_layer):
        plan.update(_layer_plan(f"decoder.blocks.{i}", f"decoder/layer_{i}", decoder=True))
    return plan


# ---- hparams -------------------------------------------------------------------------------------


def _count_layers(model: ct2.Ct2Model, side: str) -> int:
    pat = re.compile(rf"^{side}/layer_(\d+)/")
    idx = {int(m.group(1)) for name in model.variables if (m := pat.match(name))}
    if not idx:
        raise ConversionError(f"{model.source} has no {side}/layer_N variables; expected a CTranslate2 "
                              "Whisper model.")
    if idx != set(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise ConversionError(f"{model.source} lacks {side} layer(s) {missing}; the model file is "
                              "incomplete.")
    return len(idx)


def _shape(model: ct2.Ct2Model, var: str) -> tuple[int, ...]:
    return tuple(int(d) for d in model.get(var).shape)


def _heads(model: ct2.Ct2Model, side: str, state: int) -> int:
    var = f"{side}/num_heads"
    if var in model:
        return int(model.get(var))
    # Older converters did not store it; every Whisper size uses 64-wide heads.
    return state // 64


def infer_hparams(model: ct2.Ct2Model) -> dict[str, int]:
    """The ggml header's hparams, read off the CTranslate2 variables' shapes."""
    if model.spec != "WhisperSpec":
        raise ConversionError(
            f"{model.source} holds a {model.spec!r} model, expected 'WhisperSpec'; convert a Whisper model."
        )
    conv1 = _shape(model, "encoder/conv1/weight")
    enc_pos = _shape(model, "encoder/position_encodings/encodings")
    dec_pos = _shape(model, "decoder/position_encodings/encodings")
    emb = _shape(model, "decoder/embeddings/weight")
    ranks = (
        ("encoder/conv1/weight", conv1, 3),
        ("encoder/position_encodings/encodings", enc_pos, 2),
        ("decoder/position_encodings/encodings", dec_pos, 2),
        ("decoder/embeddings/weight", emb, 2),
    )
    for var, shp, rank in ranks:
        if len(shp) != rank:
            raise ConversionError(f"{var} in {model.source} has shape {list(shp)}, expected rank {rank}; "
                                  "the model is not a Whisper model.")
    a_state, t_state = conv1[0], emb[1]
    return {
        "n_vocab": emb[0],
        "n_audio_ctx": enc_pos[0],
        "n_audio_state": a_state,
        "n_audio_head": _heads(model, "encoder", a_state),
        "n_audio_layer": _count_layers(model, "encoder"),
        "n_text_ctx": dec_pos[0],
        "n_text_state": t_state,
        "n_text_head": _heads(model, "decoder", t_state),
        "n_text_layer": _count_layers(model, "decoder"),
        "n_mels": conv1[1],
        "ftype": ggml.FTYPE_F16,
    }


# ---- assets --------------------------------------------------------------------------------------


def tokenizer_for(n_vocab: int) -> str:
    """convert-pt-to-ggml.py's rule: n_vocab >= 51865 is multilingual, else the English GPT-2 one."""
    return "multilingual" if n_vocab >= 51865 else "en"


def load_mel_filters(assets_dir: Path, n_mels: int) -> np.ndarray:
    path = assets_dir / MEL_FILTERS
    try:
        with np.load(path) as f:
            key = f"mel_{n_mels}"
            if key not in f:
                raise ConversionError(f"{path} has no {key!r} array (has {sorted(f.keys())}); the "
                                      f"model's n_mels is {n_mels}: use openai-whisper's mel_filters.npz.")
            return np.asarray(f[key], dtype=np.float32)
    except FileNotFoundError:
        raise ConversionError(f"Mel filters {path} do not exist; fetch the assets (invoke fetch) or set "
                              f"{ASSETS_ENV}.") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"Mel filters {path} cannot be read ({e}); fetch the assets again.") from None


def load_tiktoken_vocab(path: Path) -> list[bytes]:
    """Tokens in file order, deduplicated as convert-pt-to-ggml.py's dict does."""
    try:
        contents = path.read_bytes()
    except FileNotFoundError:
        raise ConversionError(f"Tokenizer {path} does not exist; fetch the assets (invoke fetch) or set "
                              f"{ASSETS_ENV}.") from None
    tokens: dict[bytes, int] = {}
    for lineno, line in enumerate(contents.splitlines(), 1):
        if not line:
            continue
        try:
            tok, rank = line.split()
            tokens[base64.b64decode(tok)] = int(rank)
        except ValueError:
            raise ConversionError(f"{path} line {lineno} is not '<base64 token> <rank>'; use "
                                  "openai-whisper's tiktoken file.") from None
    return list(tokens)


# ---- conversion ----------------------------------------------------------------------------------


def _weight(model: ct2.Ct2Model, var: str) -> np.ndarray:
    arr = model.get(var)
    if arr.dtype.kind in "iu":
        # Quantized CTranslate2 weights (int8/int16) carry a per-row or global scale: w = q / scale.
        scale_var = var + "_scale"
        if scale_var not in model:
            raise ConversionError(f"{var} in {model.source} is {arr.dtype} without {scale_var}; the "
                                  "model is corrupt.")
        scale = np.asarray(model.get(scale_var), dtype=np.float32)
        if scale.ndim == 1:
            scale = scale.reshape((-1,) + (1,) * (arr.ndim - 1))
        return arr.astype(np.float32) / scale
    return arr


def _expected_source_shape(src: _Src, shape: tuple[int, ...]) -> tuple[int, ...]:
    if src.as_column:
        return (shape[0],)
    return (shape[0] * src.parts,) + shape[1:]


def check_model(model: ct2.Ct2Model, hparams: dict[str, int]) -> dict[str, _Src]:
    """Every tensor whisper.cpp needs is present with the right shape, and nothing unknown is left.

    Collects every problem, then raises one ConversionError listing them all.
    """
    plan = tensor_plan(hparams["n_audio_layer"], hparams["n_text_layer"])
    inventory = ggml.expected_inventory(hparams, quantized=False)
    problems: list[str] = []
    checked: set[str] = set()
    for name, (_ttype, shape) in inventory.items():
        src = plan[name]
        if src.var in checked:  # one report per fused variable, not one per slice
            continue
        checked.add(src.var)
        want = _expected_source_shape(src, shape)
        if src.var not in model:
            problems.append(f"{src.var} (for {name}, expected shape {list(want)}) is missing")
            continue
        got = _shape(model, src.var)
        if got != want:
            problems.append(f"{src.var} (for {name}) has shape {list(got)}, expected {list(want)}")
        elif model.get(src.var).dtype.kind not in "fiu":
            problems.append(f"{src.var} (for {name}) has dtype {model.get(src.var).dtype}, expected a "
                            "number type")
    used = {s.var for s in plan.values()}
    used |= {v + "_scale" for v in used}
    for var in model.variables:
        if var in used or var.rsplit("/", 1)[-1] in _UNUSED_SCALARS:
            continue
        if var == "decoder/projection/weight":
            # whisper.cpp ties the output projection to the token embedding; only a copy is safe to drop.
            if not np.array_equal(model.variables[var], model.get("decoder/embeddings/weight")):
                problems.append(f"{var} differs from decoder/embeddings/weight, which whisper.cpp "
                                "cannot represent")
            continue
        problems.append(f"{var} (shape {list(model.variables[var].shape)}) has no place in a "
                        "whisper.cpp model")
    if problems:
        raise ConversionError(
            f"{model.source} cannot be converted to whisper.cpp: " + "; ".join(problems)
            + ". Convert a complete, unmodified CTranslate2 Whisper model."
        )
    return plan


def _tensors(
    model: ct2.Ct2Model, hparams: dict[str, int], plan: dict[str, _Src]
) -> Iterator[tuple[str, int, np.ndarray]]:
    for name, (ttype, shape) in ggml.expected_inventory(hparams, quantized=False).items():
        src = plan[name]
        arr = _weight(model, src.var)
        if src.parts > 1:
            rows = arr.shape[0] // src.parts
            arr = arr[src.part * rows:(src.part + 1) * rows]
        arr = arr.reshape(shape)
        yield name, ttype, arr


def verify_output(path: Path, hparams: dict[str, int]) -> None:
    """The written file has these hparams and exactly the expected tensors, types and shapes."""
    header = ggml.read_header(path)
    if header.hparams != hparams:
        raise ConversionError(f"{path}: header hparams {header.hparams} differ from {hparams} "
                              "(converter bug).")
    want = ggml.expected_inventory(hparams, quantized=False)
    got = {t.name: (t.ttype, t.shape) for t in ggml.iter_tensors(path)}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:5]
        raise ConversionError(f"{path}: tensor inventory differs from whisper.cpp's (first differences: "
                              f"{diff}) (converter bug).")


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    size: int
    sha256: str
    hparams: dict[str, int]
    tokenizer: str


def convert_ct2(
    model_bin_parts: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    assets_dir: str | os.PathLike[str],
    tokenizer: str | None = None,
) -> ConvertResult:
    """Convert CTranslate2 model.bin (or its parts, in order) to a ggml f16 file at `out`.

    `tokenizer` is "en" or "multilingual"; None picks it from n_vocab as whisper.cpp's script does.
    """
    out = Path(out)
    assets = Path(assets_dir)
    model = ct2.read_model(model_bin_parts)
    hparams = infer_hparams(model)
    expected_tok = tokenizer_for(hparams["n_vocab"])
    if tokenizer is None:
        tokenizer = expected_tok
    elif tokenizer not in TOKENIZER_FILES:
        raise ConversionError(f"Tokenizer {tokenizer!r} is unknown: expected one of "
                              f"{', '.join(TOKENIZER_FILES)}.")
    elif tokenizer != expected_tok:
        raise ConversionError(
            f"{model.source} has n_vocab {hparams['n_vocab']}, which whisper.cpp treats as {expected_tok!r}, "
            f"but tokenizer {tokenizer!r} was asked for; drop --tokenizer or pass {expected_tok!r}."
        )
    plan = check_model(model, hparams)
    mel = load_mel_filters(assets, hparams["n_mels"])
    vocab = load_tiktoken_vocab(assets / TOKENIZER_FILES[tokenizer])
    if not out.parent.is_dir():
        raise ConversionError(f"Output directory {out.parent} does not exist; create it first.")

    tmp = out.with_name(f".{out.name}.converting-{os.getpid()}")
    try:
        written = ggml.write_model(tmp, hparams, mel, vocab, _tensors(model, hparams, plan))
        try:
            verify_output(tmp, hparams)
        except VerificationError as e:
            raise ConversionError(f"The converted file failed its own check: {e}") from None
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info(f"converted {model.source} -> {out} ({written.size} bytes, sha256 {written.sha256})")
    return ConvertResult(out, written.size, written.sha256, hparams, tokenizer)


def find_model_parts(src_dir: str | os.PathLike[str]) -> list[Path]:
    """model.bin, else model.bin.part1, part2, ... in numeric order."""
    d = Path(src_dir)
    if not d.is_dir():
        raise ConversionError(f"{d} is not a directory; pass the CTranslate2 model directory (holding "
                              "model.bin).")
    if (d / "model.bin").is_file():
        return [d / "model.bin"]
    parts = []
    for p in d.iterdir():
        m = re.fullmatch(r"model\.bin\.part(\d+)", p.name)
        if m and p.is_file():
            parts.append((int(m.group(1)), p))
    if not parts:
        raise ConversionError(f"{d} holds neither model.bin nor model.bin.part1..N; pass a CTranslate2 "
                              "model directory.")
    parts.sort()
    numbers = [n for n, _ in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or numbers[0] not in (0, 1):
        raise ConversionError(f"{d} has model.bin parts {numbers}, which are not consecutive from 1; a "
                              "part is missing.")
    return [p for _, p in parts]


def convert_ct2_dir(
    src_dir: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    tokenizer: str | None = None,
    *,
    assets_dir: str | os.PathLike[str],
) -> ConvertResult:
    """The CLI's `convert --from DIR --to FILE`: find model.bin (or its parts) in DIR and convert.

    The caller proves the assets (inputs.fetch.assets_dir): this format layer fetches nothing."""
    parts = find_model_parts(src_dir)
    return convert_ct2(parts, dst, assets_dir=Path(assets_dir), tokenizer=tokenizer)
