"""A typed TOML table loader: reads a parsed table into frozen dataclasses, checking every key.

The field types say what each key must be (str, int, float, bool, tuples and lists, dict[str, X],
nested dataclasses, X | None); field metadata from the helpers below changes how a field is read.
Every problem is collected with the table and key it concerns, so the caller can report all of
them at once (core/pins.py turns them into one ConfigError naming release.toml).
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints


# ---- how a field is read (metadata of dataclass fields; the loader below honours them) ----------
def toml_key(name: str) -> dict[str, Any]:
    """The field is read from TOML key `name` (for keys that are no Python identifier)."""
    return {"toml": name}


def keys_matching(pattern: str) -> dict[str, Any]:
    """A dict field gathered from the table's keys that fullmatch `pattern`, keyed by its group 1."""
    return {"pattern": re.compile(pattern)}


def parsed_by(parse: Callable[[Any], Any]) -> dict[str, Any]:
    """The raw value goes through `parse`, which returns the field's value or raises
    ValueError(what was expected)."""
    return {"parse": parse}


def loaded_as(cls: type, then: Callable[[Any], Any]) -> dict[str, Any]:
    """The field is read as dataclass `cls` (every key checked), then turned into its value by `then`."""
    return {"load_as": cls, "then": then}


TABLE_NAME: dict[str, Any] = {"table_name": True}  # the field holds the table's own key, not a value


# ---- the loader -----------------------------------------------------------------------------------
T = TypeVar("T")
BAD = object()  # a value that produced a problem (already recorded)
_SIMPLE = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURAL = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _optional_inner(tp: Any) -> Any:
    """X for `X | None`, else tp."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def describe_expected(tp: Any) -> str:
    tp = _optional_inner(tp)
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin in (tuple, list):
        return f"a list of {_PLURAL.get(args[0], 'tables')}"
    if origin is dict:
        return f"a table of {_PLURAL.get(args[1], 'tables')}"
    if tp is Any:
        return "any value"
    return "a table"


def describe_found(value: Any) -> str:
    kinds = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def table_name(parts: tuple[str, ...]) -> str:
    bare = re.compile(r"[A-Za-z0-9_-]+")
    return ".".join(p if bare.fullmatch(p) else f'"{p}"' for p in parts)


class Loader:
    """One read of a pins file: converts tables into the dataclasses, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def value(self, tp: Any, value: Any, table: tuple[str, ...], key: str) -> Any:
        tp = _optional_inner(tp)
        where = f"[{table_name(table)}] {key}" if table else f"[{key}]"

        def bad() -> Any:
            self.problems.append(f"{where} must be {describe_expected(tp)}, found {describe_found(value)}")
            return BAD

        if tp is Any:
            return value
        if tp in (str, bool):
            return value if type(value) is tp else bad()
        if tp is int:
            return value if type(value) is int else bad()
        if tp is float:
            return float(value) if type(value) in (int, float) else bad()
        origin, args = get_origin(tp), get_args(tp)
        if origin in (tuple, list):
            if not isinstance(value, list):
                return bad()
            if is_dataclass(args[0]):
                items = [
                    self.table(cast(type, args[0]), v, (*table, key, str(i)))
                    if isinstance(v, dict)
                    else self.value(args[0], v, table, f"{key}[{i}]")
                    for i, v in enumerate(value)
                ]
            else:
                items = [self.value(args[0], v, table, f"{key}[{i}]") for i, v in enumerate(value)]
            return BAD if BAD in items else origin(items)
        if origin is dict:
            if not isinstance(value, dict):
                return bad()
            conv = {k: self.item(args[1], v, (*table, key), k) for k, v in value.items()}
            return BAD if BAD in conv.values() else conv
        if is_dataclass(tp):
            return self.table(cast(type, tp), value, (*table, key)) if isinstance(value, dict) else bad()
        raise TypeError(f"pins loader cannot read a field of type {tp!r}")  # a programming error

    def item(self, tp: Any, value: Any, table: tuple[str, ...], key: str) -> Any:
        """One entry of a dict field: a dataclass gets its key as table name."""
        if is_dataclass(tp) and isinstance(value, dict):
            return self.table(cast(type, tp), value, (*table, key))
        return self.value(tp, value, table, key)

    def table(self, cls: type[T], raw: dict[str, Any], table: tuple[str, ...]) -> T:
        hints = get_type_hints(cls)
        here = f"[{table_name(table)}]"
        left = dict(raw)
        kwargs: dict[str, Any] = {}
        ok = True
        patterned: list[Field[Any]] = []
        for f in fields(cast(Any, cls)):
            meta = f.metadata
            if meta.get("table_name"):
                kwargs[f.name] = table[-1]
                continue
            if "pattern" in meta:
                patterned.append(f)
                continue
            key = meta.get("toml", f.name)
            if key not in left:
                if f.default is MISSING and f.default_factory is MISSING:
                    what = "a table" if is_dataclass(hints[f.name]) else describe_expected(hints[f.name])
                    self.problems.append(f"{here} lacks the key {key}: expected {what}, found nothing")
                    ok = False
                continue
            value = left.pop(key)
            if "parse" in meta:
                try:
                    kwargs[f.name] = meta["parse"](value)
                except ValueError as e:
                    self.problems.append(f"{here} {key} must be {e}, found {describe_found(value)}")
                    ok = False
                continue
            got = self.value(meta.get("load_as", hints[f.name]), value, table, key)
            ok = ok and got is not BAD
            kwargs[f.name] = meta["then"](got) if "then" in meta and got is not BAD else got
        for f in patterned:
            pattern, inner = f.metadata["pattern"], get_args(hints[f.name])[1]
            found: dict[str, Any] = {}
            for key in [k for k in left if pattern.fullmatch(k)]:
                found[pattern.fullmatch(key).group(1)] = got = self.value(inner, left.pop(key), table, key)
                ok = ok and got is not BAD
            kwargs[f.name] = found
        for key in left:
            self.problems.append(
                f"{here} has an unknown key {key} (expected only: {', '.join(keys_of(cls))})"
            )
            ok = False
        return cls(**kwargs) if ok else cast(T, BAD)


def keys_of(cls: Any) -> list[str]:
    """The TOML keys a table may hold, for the message about an unknown one."""
    out = []
    for f in fields(cls):
        if f.metadata.get("table_name"):
            continue
        if "pattern" in f.metadata:
            out.append(re.sub(r"\(.*?\)", "<type>", f.metadata["pattern"].pattern))
        else:
            out.append(f.metadata.get("toml", f.name))
    return out
