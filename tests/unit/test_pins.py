"""release.toml's [build] quantize and the per-type size pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from whisper_release.core.errors import ConfigError
from whisper_release.core.pins import QUANT_TYPES, default_pins_path, load_pins, quantizations
from whisper_release.weights import ggml


def _with_quantize(tmp_path: Path, value: str) -> Path:
    text = default_pins_path().read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^quantize = .*$", f"quantize = {value}", text)
    assert n == 1
    p = tmp_path / "release.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_release_ships_q5_1_first_then_q8_0() -> None:
    pins = load_pins()
    assert pins.quantizations == ("q5_1", "q8_0")
    assert pins.primary_quantization == "q5_1"
    assert set(pins.quantizations) <= set(QUANT_TYPES) <= set(ggml.CODECS)


def test_one_type_as_a_string_is_accepted(tmp_path: Path) -> None:
    assert load_pins(_with_quantize(tmp_path, '"q8_0"')).quantizations == ("q8_0",)


@pytest.mark.parametrize("value", ['["q4_0"]', "[]", '["q5_1", "q5_1"]', "5"])
def test_bad_quantize_is_one_clear_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_pins(_with_quantize(tmp_path, value))
    msg = str(e.value)
    assert msg.startswith("[build] quantize in ")
    assert "must list distinct quantization types out of q5_1, q8_0" in msg
    assert msg.endswith("fix release.toml.")


def test_quantizations_of_a_value() -> None:
    assert quantizations(["q8_0", "q5_1"]) == ("q8_0", "q5_1")
    with pytest.raises(ConfigError):
        quantizations(None)


@pytest.mark.parametrize("model", ["small", "medium"])
def test_q8_0_size_pin_follows_from_the_q5_1_pin_and_the_shapes(model: str) -> None:
    # Every quantized tensor's blocks grow from 24 bytes (q5_1) to 34 (q8_0); nothing else changes.
    pin = load_pins().model(model)
    q5 = ggml.expected_inventory(pin.hparams, True, ggml.GGML_TYPE_Q5_1)
    q8 = ggml.expected_inventory(pin.hparams, True, ggml.GGML_TYPE_Q8_0)
    grow = sum(ggml.tensor_nbytes(*q8[n]) - ggml.tensor_nbytes(*q5[n]) for n in q5)
    q5_size = pin.quantized_size("q5_1")
    assert q5_size is not None and pin.quantized_size("q8_0") == q5_size + grow
