"""``--set key=value`` overrides of config dataclasses.

A key is a dotted path of field names into nested dataclasses
(``box_head.pooler.kind``); a value is JSON (``0.6``, ``[8, 16]``, ``true``,
``null``), or the raw text when it is not JSON (``roi_pool``). The value is
checked against the field's declared type, not the type of the value it
holds now, so that ``box_head.min_box_size`` (``float | None``, maybe None)
still refuses a string:

    bool                  JSON true or false only (not 1, not "yes")
    int                   a JSON integer
    float                 a JSON number (an integer becomes a float)
    str                   text
    Literal[...]          one of the choices; a wrong one is named with them
    tuple[X, ...]         a JSON list, each item an X
    tuple[X, Y]           a JSON list of exactly that length
    X | None              null, or an X
    a dataclass           a JSON object of its fields (``keypoint_head={}``)

Errors are ``ValueError("--set KEY: what is wrong")``. Ranges and other rules
are the config's own: each dataclass checks itself where it is rebuilt.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def apply_overrides(config: Any, assignments: list[str]) -> Any:
    """``config`` (a dataclass) with each ``key=value`` of ``assignments`` applied, in order."""
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        config = _replace_path(config, key.split("."), raw, key)
    return config


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _replace_path(obj: Any, path: list[str], raw: str, key: str) -> Any:
    """``obj`` with the field at ``path`` set to the value ``raw`` describes."""
    name = path[0]
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ValueError(f"--set {key}: {name!r} is inside a value of type {type(obj).__name__}, "
                         "not a config")
    cls = type(obj)
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        # A field one level down (moved into a nested config), else a near spelling.
        nested = [f"{n}.{name}" for n in names if dataclasses.is_dataclass(getattr(obj, n))
                  and name in {f.name for f in dataclasses.fields(getattr(obj, n))}]
        close = nested or difflib.get_close_matches(name, names, n=1)
        above = key.split(".")[: len(key.split(".")) - len(path)]  # the keys that led here
        hint = f"did you mean {'.'.join([*above, close[0]])!r}? " if close else ""
        raise ValueError(f"--set {key}: {cls.__name__} has no field {name!r} "
                         f"({hint}fields: {', '.join(sorted(names))})")
    current = getattr(obj, name)
    if len(path) > 1:
        if current is None:
            raise ValueError(f"--set {key}: {name} is null (off) in this config; "
                             f"turn it on first with --set {key.rsplit('.', len(path) - 1)[0]}={{}}")
        new = _replace_path(current, path[1:], raw, key)
    else:
        new = _parse(_hints(cls)[name], raw, key, current)
    try:  # the config checks its choices and ranges where it is built
        return dataclasses.replace(obj, **{name: new})
    except (ValueError, TypeError) as e:
        if str(e).startswith("--set "):
            raise
        raise ValueError(f"--set {key}: {e}") from None


def _parse(hint: Any, raw: str, key: str, current: Any) -> Any:
    """The value of a field typed ``hint`` that the command-line text ``raw`` describes."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    try:
        return _coerce(hint, value, current)
    except _Mismatch as e:
        # Text that happens to be JSON (``name=1``) is still text for a string field.
        if value != raw:
            try:
                return _coerce(hint, raw, current)
            except _Mismatch:
                pass
        raise ValueError(f"--set {key}: {e}") from None


class _Mismatch(Exception):
    """A value that does not fit a type; its message says why (without the key)."""


def _coerce(hint: Any, value: Any, current: Any = None) -> Any:
    """``value`` as a ``hint``, or ``_Mismatch``. ``current`` is the field's value (for dataclasses)."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        choices = get_args(hint)
        if any(value == c and type(value) is type(c) for c in choices):  # True is not 1
            return value
        raise _Mismatch(f"{value!r} is not one of: {', '.join(repr(c) for c in choices)}")
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]) and isinstance(value, dict):
            return _coerce(options[0], value, current)  # its own errors name the field
        for arg in options:
            try:
                return _coerce(arg, value, current)
            except _Mismatch as e:
                if len(options) == 1 and get_origin(arg) is Literal:  # the choices say it best
                    raise _Mismatch(f"{e} (or null)") from None
        raise _Mismatch(f"expected {_describe(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"expected {_describe(hint)} (a JSON list), got {value!r}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise _Mismatch(f"expected {_describe(hint)}, got {len(value)} items: {value!r}")
        try:
            return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
        except _Mismatch:
            raise _Mismatch(f"expected {_describe(hint)}, got {value!r}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _coerce_dataclass(hint, value, current)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        raise _Mismatch(f"a field of type {hint} cannot be set from the command line")
    raise _Mismatch(f"expected {_describe(hint)}, got {value!r}")


def _coerce_dataclass(cls: type, value: Any, current: Any) -> Any:
    """A JSON object of fields -> ``cls``, starting from ``current`` (or ``cls``'s defaults)."""
    if not isinstance(value, dict):
        raise _Mismatch(f"expected {_describe(cls)}, got {value!r}")
    base = current if isinstance(current, cls) else None
    if base is None:
        try:
            base = cls()
        except TypeError as e:
            raise _Mismatch(f"{cls.__name__} has no defaults to start from ({e})") from None
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for name, item in value.items():
        if name not in names:
            raise _Mismatch(f"{cls.__name__} has no field {name!r} (fields: {', '.join(sorted(names))})")
        try:
            changes[name] = _coerce(hints[name], item, getattr(base, name))
        except _Mismatch as e:
            raise _Mismatch(f"{cls.__name__}.{name}: {e}") from None
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as e:
        raise _Mismatch(str(e)) from None


def _describe(hint: Any) -> str:
    """``hint`` in words: "a float", "a list of ints", "one of 'a', 'b'", "an int or null"."""
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return "a list of " + ", ".join(_describe(a) for a in args)
    words = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string"}
    if hint in words:
        return words[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} (a JSON object of its fields)"
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(hint: Any) -> str:
    if get_origin(hint) is tuple:
        return "lists"
    names = {bool: "bools", int: "ints", float: "floats", str: "strings"}
    return names.get(hint, f"{getattr(hint, '__name__', hint)}s")
