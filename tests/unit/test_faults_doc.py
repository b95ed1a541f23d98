"""docs/faults.md, the fault table of issue 13: every row names a test that exists, no fault is
listed twice, and the table keeps at least MIN_ROWS rows."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "docs" / "faults.md"
MIN_ROWS = 35
HEADER = ("fault or bad input", "what the tool does", "test")
# `tests/x/test_y.py::test_name`, `…::TestClass::test_name`, optionally with a parametrize id `[...]`.
TEST_REF = re.compile(r"`((?:tests|verify)/[\w/.-]+\.py)((?:::\w+)+)(\[[^\]`]*\])?`")


@dataclass(frozen=True)
class Row:
    line: int
    section: str
    fault: str
    action: str
    tests: str


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> list[Row]:
    """Every data row of every table: header and separator rows are checked, then skipped."""
    rows: list[Row] = []
    section = ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.lstrip().startswith("|"):
            continue
        cells = _cells(line)
        if tuple(c.lower() for c in cells) == HEADER or all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            continue
        assert len(cells) == 3, f"docs/faults.md:{n}: a row has 3 cells (fault | what the tool does | test)"
        assert section, f"docs/faults.md:{n}: a row must sit under a `## ` heading"
        rows.append(Row(n, section, *cells))
    return rows


@cache
def _defined(path: Path) -> frozenset[str]:
    """`name` and `Class::name` of every test function the file defines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            methods = [f for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
            names.update(f"{node.name}::{f.name}" for f in methods)
    return frozenset(names)


def problems_of(rows: list[Row], root: Path = ROOT) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for r in rows:
        where = f"docs/faults.md:{r.line}"
        key = re.sub(r"\s+", " ", r.fault.lower()).strip("` ")
        if not key or not r.action:
            problems.append(f"{where}: empty fault or action cell")
        if key in seen:
            problems.append(f"{where}: the fault {r.fault!r} is already listed at line {seen[key]}")
        seen.setdefault(key, r.line)
        refs = TEST_REF.findall(r.tests)
        if not refs or TEST_REF.sub("", r.tests).strip(" ,;") != "":
            problems.append(f"{where}: the test cell must be `path.py::test_name` (got {r.tests!r})")
        for rel, names, _param in refs:
            path = root / rel
            name = names[2:]
            if not path.is_file():
                problems.append(f"{where}: {rel} does not exist")
            elif name not in _defined(path):
                problems.append(f"{where}: {rel} defines no test {name!r}")
            elif not name.split("::")[-1].startswith("test"):
                problems.append(f"{where}: {name!r} is not a test function (its name must start with test)")
    return problems


ROWS = parse(FAULTS.read_text(encoding="utf-8"))


def test_every_row_names_an_existing_test_and_no_fault_is_listed_twice() -> None:
    problems = problems_of(ROWS)
    assert not problems, "\n".join(problems)


def test_the_table_has_at_least_35_rows() -> None:
    sections = {r.section for r in ROWS}
    assert len(ROWS) >= MIN_ROWS, f"docs/faults.md has {len(ROWS)} rows in {len(sections)} sections"


def test_the_checker_catches_a_missing_test_a_duplicate_and_a_bad_cell(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "def test_one():\n    pass\n\n\nclass TestB:\n    def test_two(self):\n        pass\n"
    )
    text = "\n".join([
        "## S",
        "| fault or bad input | what the tool does | test |",
        "|---|---|---|",
        "| a | refuses | `tests/test_a.py::test_one[x-1]` |",
        "| b | refuses | `tests/test_a.py::TestB::test_two` |",
        "| A  | refuses | `tests/test_a.py::test_one` |",
        "| c | refuses | `tests/test_a.py::test_missing` |",
        "| d | refuses | `tests/nope.py::test_one` |",
        "| e | refuses | test_one |",
    ])
    found = problems_of(parse(text), tmp_path)
    assert len(found) == 4, found
    assert "already listed" in found[0] and "test_missing" in found[1] and "nope.py" in found[2]
    assert "must be" in found[3]
    with pytest.raises(AssertionError, match="3 cells"):
        parse("## S\n| a | b |\n")
