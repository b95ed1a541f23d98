"""The package's shape (issue 12): small modules, no import cycles, imports at the top.

The layers themselves are import-linter's contracts in pyproject.toml (`nox -s lint`); these are the
rules it cannot express.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[2] / "src" / "whisper_release"
MAX_LINES = 700
# Optional or heavy third-party modules a function may import where it needs them (each an extra's).
OPTIONAL = {"faster_whisper", "ctranslate2", "pywhispercpp", "matplotlib", "pytest", "jiwer",
            "whisper_normalizer"}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_over_700_lines() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _modules()}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert long == {}


def _inner_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, has a comment saying why) for every import inside a function."""
    lines = path.read_text().splitlines()
    out = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in ast.walk(fn):
                if isinstance(n, ast.Import | ast.ImportFrom):
                    names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                    above = n.lineno - 2  # the comment may head a block of imports
                    while above > 0 and lines[above].strip().startswith(("import ", "from ")):
                        above -= 1
                    said = "#" in lines[n.lineno - 1] or lines[above].strip().startswith("#")
                    out += [(n.lineno, name, said) for name in names]
    return out


def test_imports_inside_functions_only_for_optional_dependencies_each_with_a_reason() -> None:
    bad = []
    for p in _modules():
        for line, name, said in _inner_imports(p):
            optional = name.split(".")[0] in OPTIONAL
            entry = p.name == "cli.py"  # the console script loads each command's stack on demand
            if not ((optional or entry) and said):
                bad.append(f"{p.relative_to(SRC)}:{line} imports {name}")
    assert bad == []


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    graph = grimp.build_graph("whisper_release")
    cycles = []
    for mod in sorted(graph.modules):
        for dep in graph.find_modules_directly_imported_by(mod):
            if dep != mod and graph.chain_exists(importer=dep, imported=mod):
                cycles.append(f"{mod} <-> {dep}")
    assert cycles == []
