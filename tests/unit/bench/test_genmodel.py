"""Generated models at tiny shapes: the file is exactly what whisper.cpp's loader expects (names,
shapes, types, the q5_1 header ftype, exact size), deterministic per seed, and labelled."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_release.bench import genmodel
from whisper_release.core.errors import ConfigError
from whisper_release.weights import ggml, quants

TINY = {
    "n_vocab": 40, "n_audio_ctx": 8, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 1,
    "n_text_ctx": 6, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 1, "n_mels": 4, "ftype": 1,
}  # fmt: skip
MEL = np.linspace(0, 1, 4 * 5, dtype=np.float32).reshape(4, 5)
VOCAB = [f"t{i}".encode() for i in range(30)]


@pytest.mark.parametrize("quant", ["f16", "q5_1"])
def test_layout_matches_what_whisper_cpp_loads(tmp_path, quant):
    path = tmp_path / f"m-{quant}.bin"
    written = genmodel.write_generated(path, TINY, MEL, VOCAB, seed=7, quant=quant)
    header = ggml.read_header(path)
    assert header.hparams["ftype"] == (1 if quant == "f16" else 2009)
    infos = {t.name: t for t in ggml.iter_tensors(path)}
    want = ggml.expected_inventory(TINY, quantized=quant == "q5_1")
    assert list(infos) == list(want)
    for name, (ttype, shape) in want.items():
        assert (infos[name].ttype, tuple(infos[name].shape)) == (ttype, shape), name
    vocab_bytes = sum(len(t) for t in VOCAB)
    assert written.size == path.stat().st_size == ggml.expected_file_size(
        TINY, 4, 5, vocab_bytes, len(VOCAB), quantized=quant == "q5_1"
    )


def test_weights_are_seeded_random_with_the_intended_scale(tmp_path):
    a = genmodel.write_generated(tmp_path / "a.bin", TINY, MEL, VOCAB, seed=1)
    b = genmodel.write_generated(tmp_path / "b.bin", TINY, MEL, VOCAB, seed=1)
    c = genmodel.write_generated(tmp_path / "c.bin", TINY, MEL, VOCAB, seed=2)
    assert a.sha256 == b.sha256 != c.sha256
    info = next(t for t in ggml.iter_tensors(a.path) if t.name == "encoder.blocks.0.mlp.0.weight")
    w = ggml.read_tensor(a.path, info)
    assert 0.015 < float(np.std(w)) < 0.025 and abs(float(np.mean(w))) < 0.005


def test_q5_1_tensors_decode_to_the_f16_files_weights(tmp_path):
    f16 = genmodel.write_generated(tmp_path / "f.bin", TINY, MEL, VOCAB, seed=3, quant="f16")
    q = genmodel.write_generated(tmp_path / "q.bin", TINY, MEL, VOCAB, seed=3, quant="q5_1")
    name = "decoder.blocks.0.attn.query.weight"
    tf = next(t for t in ggml.iter_tensors(f16.path) if t.name == name)
    tq = next(t for t in ggml.iter_tensors(q.path) if t.name == name)
    wf = ggml.read_tensor(f16.path, tf).reshape(-1)
    wq = ggml.read_tensor(q.path, tq).reshape(-1)
    raw = ggml.read_tensor_bytes(q.path, tq)
    bound = np.repeat(quants.q5_1_error_bound(raw, wq.size), 32) + 2.0**-10 * np.abs(wf)  # f16 rounding of wf
    assert np.all(np.abs(wq - wf) <= bound)


def test_per_tensor_seed_does_not_depend_on_order():
    assert genmodel.tensor_seed(5, "x") == genmodel.tensor_seed(5, "x") != genmodel.tensor_seed(5, "y")


def test_unknown_quant_and_missing_hparams_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="Unknown quantisation 'q4_0'"):
        list(genmodel.random_tensors(TINY, 1, "q4_0"))
    bad = {k: v for k, v in TINY.items() if k != "n_mels"}
    with pytest.raises(ConfigError, match="n_mels"):
        genmodel.write_generated(tmp_path / "x.bin", bad, MEL, VOCAB, seed=1)
    assert not list(tmp_path.iterdir())


def test_label_says_random_weights():
    assert genmodel.LABEL == "random weights"
