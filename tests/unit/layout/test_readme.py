"""The README template renders completely, and its Python example is valid, self-contained code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from whisper_release.core.pins import QUANT_TYPES, load_pins, project_root
from whisper_release.layout import readme

TEMPLATE = project_root() / "packaging" / "README.template.md"


def _values(**over: object) -> dict[str, object]:
    pins = load_pins()
    meta: dict = {
        "required_cpu_flags": list(pins.build.required_cpu_flags),
        "whisper_cpp": {"version": "1.8.5", "commit": "c" * 40, "tree": "t" * 40},
        "model": {"name": "base", "hparams": {}},
        "model_files": [
            {"name": "ggml-base-q8_0.bin", "type": "q8_0", "primary": False},
            {"name": "ggml-base-q5_1.bin", "type": "q5_1", "primary": True},
        ],
        "release_version": pins.release_version,
        "min_glibc": "2.34",
        "min_glibcxx": "GLIBCXX_3.4.30",
    }
    sizes: dict[str, int | None] = {
        "libwhisper.so": 1234567,
        "ggml-base-q5_1.bin": 59707625,
        "ggml-base-q8_0.bin": 81768585,
        "artifact.json": 2000,
        "README.md": None,
        "SHA256SUMS": None,
    }
    meta.update(over)
    return readme.readme_values(
        meta=meta, dir_name="whisper_base_xeon", sizes=sizes,
        licences="| component | version | licence | shipped as | licence text |",
    )


def test_template_renders_every_placeholder() -> None:
    text = readme.render(TEMPLATE.read_text(), _values())
    assert "{{" not in text and "}}" not in text
    assert "glibc 2.34 or" in text
    assert "GLIBCXX_3.4.30 (GCC 12 or newer" in text
    assert "AVX, AVX2, FMA, F16C, BMI2, SSE4.2" in text
    assert "avx|avx2|fma|f16c|bmi2|sse4_2" in text
    assert "59,707,625 bytes, 56.9 MiB" in text
    # Both model files in the table, the primary first and loaded by the example.
    q8_row = "| `ggml-base-q8_0.bin` | q8_0 | 81,768,585"
    assert text.index("| `ggml-base-q5_1.bin` | q5_1 |") < text.index(q8_row)
    assert 'MODEL = os.path.join(WHISPER_DIR, "ggml-base-q5_1.bin")' in text
    assert text.startswith("# whisper.cpp 1.8.5, model `base` (q5_1, q8_0), for x86-64 Xeon servers")


def test_missing_or_unused_value_is_an_error() -> None:
    values = _values()
    del values["glibc"]
    with pytest.raises(readme.TemplateError, match=r"missing values \['glibc'\]"):
        readme.render(TEMPLATE.read_text(), values)
    with pytest.raises(readme.TemplateError, match=r"unused values \['extra'\]"):
        readme.render("{{a}}", {"a": 1, "extra": 2})


def test_example_is_python_that_uses_only_the_stdlib() -> None:
    code = readme.python_example(readme.render(TEMPLATE.read_text(), _values()))
    tree = ast.parse(code)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"array", "ctypes", "os", "sys", "wave"}
    assert '"ggml-base-q5_1.bin"' in code
    # whisper_full takes the struct by value: the declared size is checked by the example itself.
    assert "assert ctypes.sizeof(FullParams) == 304" in code


def test_full_params_struct_in_example_has_the_header_size() -> None:
    code = readme.python_example(readme.render(TEMPLATE.read_text(), _values()))
    start = code.index("class ContextParams")
    end = code.index("assert ctypes.sizeof")
    ns: dict = {}
    exec("import ctypes\n" + code[start:end], ns)
    import ctypes

    assert ctypes.sizeof(ns["FullParams"]) == readme.FULL_PARAMS_SIZE
    assert ctypes.alignment(ns["FullParams"]) == 8  # as the C struct (it holds pointers)
    assert ctypes.sizeof(ns["ContextParams"]) == 48


def test_tree_lists_sizes_sorted() -> None:
    t = readme.tree("d", {"b.so": 10, "a.bin": 2000, "README.md": None})
    assert t.splitlines() == [
        "d/",
        "├── README.md",
        "├── a.bin              2,000 bytes",
        "└── b.so                  10 bytes",
    ]


def test_python_example_requires_a_block() -> None:
    with pytest.raises(readme.TemplateError):
        readme.python_example("# no code here\n")


def test_human_size() -> None:
    assert readme.human_size(1536) == "1,536 bytes, 1.5 KiB"
    assert readme.human_size(3 * 1024**3) == "3,221,225,472 bytes, 3.0 GiB"


def test_template_path_exists() -> None:
    assert Path(TEMPLATE).is_file()


def test_every_shippable_type_says_what_it_is_for() -> None:
    assert set(readme.QUANT_USE) == set(QUANT_TYPES)
    table = readme.model_table(["ggml-base-q4_0.bin"], ["q4_0"], {"ggml-base-q4_0.bin": 46471049})
    cells = [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]
    assert cells[:2] == ["`ggml-base-q4_0.bin`", "q4_0"] and cells[3].startswith("fastest on AVX2 CPUs")
