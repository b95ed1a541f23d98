"""release.toml read into typed sections: every key checked at load, profiles resolved once."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from whisper_release.core.errors import ConfigError
from whisper_release.core.pins import (
    QUANT_TYPES,
    SdistSource,
    default_pins_path,
    load_pins,
    parse_pins,
    quantizations,
)
from whisper_release.weights import ggml, quants


def _with_quantize(tmp_path: Path, value: str) -> Path:
    text = default_pins_path().read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^quantize = .*$", f"quantize = {value}", text)
    assert n == 1
    p = tmp_path / "release.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_release_ships_q5_1_first_then_q8_0_and_q4_0() -> None:
    pins = load_pins()
    assert pins.quantizations == ("q5_1", "q8_0", "q4_0")
    assert pins.primary_quantization == "q5_1"
    assert set(pins.quantizations) <= set(QUANT_TYPES) == set(quants.CODECS)


def test_one_type_as_a_string_is_accepted(tmp_path: Path) -> None:
    assert load_pins(_with_quantize(tmp_path, '"q8_0"')).quantizations == ("q8_0",)


@pytest.mark.parametrize("value", ['["q4_1"]', "[]", '["q5_1", "q5_1"]', "5"])
def test_bad_quantize_is_one_clear_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_pins(_with_quantize(tmp_path, value))
    msg = str(e.value)
    assert msg.startswith(f"Pins file {tmp_path / 'release.toml'}: [build] quantize must be ")
    assert "distinct quantization types out of q4_0, q5_1, q8_0 (the first is the primary), found " in msg
    assert msg.endswith("; fix release.toml.")


def test_quantizations_of_a_value() -> None:
    assert quantizations(["q8_0", "q5_1"]) == ("q8_0", "q5_1")
    assert quantizations(["q5_1", "q8_0", "q4_0"]) == ("q5_1", "q8_0", "q4_0")
    with pytest.raises(ConfigError):
        quantizations(None)


@pytest.mark.parametrize("model", ["small", "medium"])
def test_every_size_pin_follows_from_the_q5_1_pin_and_the_shapes(model: str) -> None:
    # Only the quantized tensors' blocks change size between types (q5_1 24 bytes, q8_0 34, q4_0 18
    # per 32 values); header, vocab and the other tensors are copied.
    pin = load_pins().model(model)
    q5 = ggml.expected_inventory(pin.hparams, True, ggml.GGML_TYPE_Q5_1)
    q5_size = pin.quantized_size("q5_1")
    assert q5_size is not None and set(pin.quantized_sizes) > {"q5_1"}
    for quant, size in pin.quantized_sizes.items():
        other = ggml.expected_inventory(pin.hparams, True, quants.codec(quant).qtype)
        grow = sum(ggml.tensor_nbytes(*other[n]) - ggml.tensor_nbytes(*q5[n]) for n in q5)
        assert size == q5_size + grow, quant


# ---- every key typed and checked at load -----------------------------------------------------------
def _pins_with(mutate: Callable[[dict[str, Any]], object]) -> Any:
    pins = load_pins()
    raw = copy.deepcopy(pins.raw)
    mutate(raw)
    return parse_pins(raw, pins.path)


def _error(mutate: Callable[[dict[str, Any]], object]) -> str:
    with pytest.raises(ConfigError) as e:
        _pins_with(mutate)
    return str(e.value)


# (section, key, a value of the wrong type, what the message must say was expected)
WRONG_TYPE = [
    ("build", "cmake_flags", "-DGGML_AVX2=ON", "a list of strings"),
    ("build", "source_date_epoch", "1704067200", "an integer"),
    ("build", "debian_suite", 12, "a string"),
    ("source", "tree", 0xA276, "a string"),
    ("source", "providers", "github", "a table"),
    ("sample", "path", ["samples/jfk.wav"], "a string"),
    ("sample", "reference", 1, "a string"),
    ("verify", "max_q5_1_wer_delta_pp", "1.0", "a number"),
    ("verify", "wer_ceiling", 0.2, "a table of tables"),
    ("publish", "bucket", True, "a string"),
    ("publish", "minio_client_suite", ["sid"], "a string"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"), WRONG_TYPE, ids=[f"{s}.{k}" for s, k, *_ in WRONG_TYPE]
)
def test_a_mistyped_key_is_one_config_error_naming_it(
    section: str, key: str, value: object, expected: str
) -> None:
    kind = {str: "a string", int: "an integer", bool: "true/false", float: "a number", list: "a list"}
    msg = _error(lambda raw: raw[section].update({key: value}))
    assert msg == (
        f"Pins file {default_pins_path()}: [{section}] {key} must be {expected}, "
        f"found {value!r} ({kind[type(value)]}); fix release.toml."
    )


MISSING = [
    ("build", "cmake_flags", "a list of strings"),
    ("build", "expected_cpu_variant", "a string"),
    ("build", "quantize", "distinct quantization types"),
    ("source", "commit", "a string"),
    ("source", "providers", "a table"),
    ("sample", "reference", "a string"),
    ("verify", "wer_ceiling", "a table of tables"),
    ("publish", "bucket", "a string"),
]


@pytest.mark.parametrize(("section", "key", "expected"), MISSING, ids=[f"{s}.{k}" for s, k, _ in MISSING])
def test_a_missing_key_is_one_config_error_naming_it(section: str, key: str, expected: str) -> None:
    msg = _error(lambda raw: raw[section].pop(key))
    if key == "quantize":  # read through its own parser, which says what it wants
        assert "[build] lacks the key quantize: expected " in msg
        return
    assert msg == (
        f"Pins file {default_pins_path()}: [{section}] lacks the key {key}: expected {expected}, "
        "found nothing; fix release.toml."
    )


@pytest.mark.parametrize(
    "table",
    [("build",), ("source",), ("source", "providers", "pypi-sdist"), ("sample",), ("verify",), ("publish",),
     ("assets",), ("profiles", "offline"), ("models", "base"), ("models", "base", "hparams")],
    ids=lambda t: ".".join(t),
)
def test_an_unknown_key_is_an_error(table: tuple[str, ...]) -> None:
    def add(raw: dict[str, Any]) -> None:
        d = raw
        for part in table:
            d = d[part]
        d["colour"] = "blue"

    msg = _error(add)
    assert " has an unknown key colour (expected only: " in msg and msg.endswith("; fix release.toml.")


def test_an_unknown_table_and_two_problems_at_once() -> None:
    assert "has an unknown table [extras]" in _error(lambda raw: raw.update(extras={}))
    msg = _error(lambda raw: (raw["build"].pop("cmake_flags"), raw["sample"].update(path=1)))
    assert msg.startswith(f"Pins file {default_pins_path()} has 2 problems: ")
    assert "[build] lacks the key cmake_flags" in msg and "[sample] path must be a string, found 1" in msg


def _leaves(d: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                yield from _leaves(item, (*path, k, str(i)))
        else:
            yield (*path, k)


LEAVES = list(_leaves(load_pins().raw))


@pytest.mark.parametrize("leaf", LEAVES, ids=[".".join(leaf) for leaf in LEAVES])
def test_every_key_of_release_toml_is_read_and_checked(leaf: tuple[str, ...]) -> None:
    """No key is silently ignored: each one, given a value no pin can have, fails the load by name."""

    def spoil(raw: dict[str, Any]) -> None:
        d: Any = raw
        for part in leaf[:-1]:
            d = d[int(part)] if isinstance(d, list) else d[part]
        d[leaf[-1]] = {"not": "a pin"}

    msg = _error(spoil)
    assert f" {leaf[-1]} must be " in msg, msg
    assert all(part in msg for part in leaf[:-1]), msg


def test_every_section_is_typed() -> None:
    pins = load_pins()
    for name in ("release", "index", "source", "assets", "sample", "build", "verify", "publish", "bench"):
        assert not isinstance(getattr(pins, name), dict), name
    assert pins.bench.reference["llamafile"].release_flags_plus == ("-DGGML_LLAMAFILE=ON",)
    assert pins.build.cmake_flags[0] == "-DCMAKE_BUILD_TYPE=Release"
    assert pins.verify.max_wer_delta_pp == {"q5_1": 1.0, "q8_0": 1.0, "q4_0": 1.0}
    assert pins.verify.wer_ceiling["real"]["base"] == 0.15
    assert pins.publish.bucket == "whisper-releases" and pins.publish.minio_client_suite == "sid"
    assert pins.model("base").hparams["n_audio_state"] == 512


# ---- profiles: resolved once, driven by data --------------------------------------------------------
def test_a_profile_resolves_to_its_provider_models_and_base_mirror() -> None:
    pins = load_pins()
    off = pins.profile("offline")
    assert isinstance(off.source, SdistSource) and off.source.package == "pywhispercpp"
    assert off.model_names == ("tiny.en", "base") and off.models[1] is pins.model("base")
    assert off.debian.mirror == pins.build.debian_mirror
    prod = pins.profile("production")
    assert prod.source.name == "github" and prod.model_names == ("small", "medium")
    assert prod.debian.mirror == f"http://snapshot.debian.org/archive/debian/{pins.build.debian_snapshot}/"


def test_the_base_mirror_follows_the_profiles_debian_key_not_its_name() -> None:
    """A new profile chooses the snapshot by data; no code knows the name 'production'."""

    def add_staging(raw: dict[str, Any]) -> None:
        raw["profiles"]["staging"] = {"source": "pypi-sdist", "models": ["base"], "debian": "snapshot"}
        raw["profiles"]["production"]["debian"] = "mirror"

    pins = _pins_with(add_staging)
    assert pins.profile("staging").debian.mirror.startswith("http://snapshot.debian.org/")
    assert pins.profile("production").debian.mirror == pins.build.debian_mirror


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        ({"source": "svn"}, "[profiles.offline] source must name a table of [source.providers] (github, "
                            "pypi-sdist), found 'svn' (a string)"),
        ({"models": ["base", "large-v3"]}, "[profiles.offline] models must name tables of [models] "),
        ({"debian": "testing"},
         "[profiles.offline] debian must be one of 'mirror', 'snapshot', found 'testing'"),
    ],
)
def test_a_profile_naming_what_does_not_exist_fails_at_load(change: dict[str, Any], wanted: str) -> None:
    assert wanted in _error(lambda raw: raw["profiles"]["offline"].update(change))


SRC = Path(__file__).resolve().parents[3] / "src" / "whisper_release"


def _offences(tree: ast.AST) -> Iterator[str]:
    """Profile look-ups by name outside an entry point's main(), and branches on a profile's name."""
    entry_bodies = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "main"
                    for n in ast.walk(f)}  # fmt: skip
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "profile"
            and id(node) not in entry_bodies
        ):
            yield f"line {node.lineno}: .profile(...) looks a profile up by name"
        if isinstance(node, ast.Compare) and any(
            isinstance(c, ast.Constant) and c.value in ("production", "offline")
            for c in [node.left, *node.comparators]
        ):
            yield f"line {node.lineno}: compares with a profile name"


def test_the_offence_finder_finds_both_kinds() -> None:
    code = (
        "def f(pins, p):\n    pins.profile(p)\n    if p == 'production': pass\n"
        "def main():\n    pins.profile('x')\n"
    )
    assert len(list(_offences(ast.parse(code)))) == 2


def test_no_layer_looks_a_profile_up_or_branches_on_its_name() -> None:
    # core/pins.py is where resolving happens; bench/ is an entry point of its own (`python -m
    # whisper_release.bench`) whose reference builds always use the offline profile's inputs.
    skip = {SRC / "core" / "pins.py"}
    found = [
        f"{path.relative_to(SRC)} {o}"
        for path in sorted(SRC.rglob("*.py"))
        if path not in skip and "bench" not in path.relative_to(SRC).parts
        for o in _offences(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == []


def test_release_ships_runtime_cpu_modules_floor_first() -> None:
    b = load_pins().build
    assert b.cpu_variants[0] == "haswell" and b.runtime_dispatch
    assert "sapphirerapids" not in b.cpu_variants  # its AMX kernels die by SIGILL (docs/performance.md)
    assert b.effective_cmake_flags[-2:] == ("-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON")
    shipped = {v.name: v for v in b.shipped_variants()}
    assert shipped["haswell"].compile_flags == b.expected_cpu_variant
    assert shipped["haswell"].cpu_flags == b.required_cpu_flags
    assert shipped["zen4"].compile_flags.startswith(b.expected_cpu_variant + ";-mavx512f")
    assert set(b.required_cpu_flags) < set(shipped["zen4"].cpu_flags)


def test_haswell_alone_is_the_single_isa_build() -> None:
    b = _pins_with(lambda raw: raw["build"].update(cpu_variants=["haswell"])).build
    assert not b.runtime_dispatch and b.effective_cmake_flags == b.cmake_flags
    assert [v.name for v in b.shipped_variants()] == ["haswell"]


@pytest.mark.parametrize(
    ("mutate", "wanted"),
    [
        (lambda raw: raw["build"].update(cpu_variants=["zen4", "haswell"]), "'haswell' first"),
        (lambda raw: raw["build"].update(cpu_variants=["haswell", "haswell"]), "distinct names"),
        (lambda raw: raw["build"].update(cpu_variants=["haswell", "pentium"]), "names out of haswell"),
        (lambda raw: raw["build"]["cpu_variant"].pop("zen4"),
         "[build] cpu_variants lists 'zen4' but there is no [build.cpu_variant.zen4] table"),
        (lambda raw: raw["build"]["cpu_variant"].update(haswell={"cpu_flags": ["avx"], "compile_flags": ""}),
         "[build.cpu_variant.haswell] names no ggml CPU module above the floor"),
        (lambda raw: raw["build"]["cpu_variant"]["icelake"].update(cpu_flags=[]),
         "[build.cpu_variant.icelake] must add cpu_flags and compile_flags"),
    ],
)
def test_bad_cpu_variants_are_one_config_error(
    mutate: Callable[[dict[str, Any]], object], wanted: str
) -> None:
    assert wanted in _error(mutate)
