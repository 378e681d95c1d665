"""Checked settings: tables (TOML files, JSON manifests, overrides) read into frozen dataclasses.

:func:`from_table` is the one way a table of settings becomes a config. The type each key
accepts comes from the dataclass's own annotations: ``int``, ``float`` (integers accepted,
non-finite numbers refused), ``bool``, ``str``, ``X | None`` (None comes only from overrides
and stored manifests: TOML has no null), ``tuple[T, ...]`` (a non-empty list),
``tuple[T1, T2]`` (a list of exactly that many values), ``list[T]`` (a list, maybe empty),
``Mapping[str, Any]`` / ``dict`` (a table, passed on as a dict), ``dict[str, T]`` (a table
whose values are checked as ``T``), and nested dataclasses (a table of their own keys).
Lists become tuples for tuple fields. The ranges and rules a config obeys live in its
``__post_init__``, which raises :class:`~sane.errors.ConfigError` through :func:`require`
with a message that starts with the field name, so that :func:`from_table` can say where
the value came from::

    c.toml: unknown key 'epoch'; known: epochs, models, ...
    c.toml: space.lr: expected a list, got 0.1
    c.toml: space.lr must be positive values, got -1.0
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from sane.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    """The table in the TOML file ``path``; ConfigError naming the file if it is malformed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """ConfigError ``"<key> must be <expected>, got <value>"`` unless ``ok`` (for
    ``__post_init__`` checks; :func:`from_table` prefixes where the value came from)."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def given(**options: Any) -> dict[str, Any]:
    """The ``options`` that are not None: command-line options left out (None) fall back to
    the library's defaults."""
    return {key: value for key, value in options.items() if value is not None}


def from_table(base: type[T] | T, table: Any, where: str) -> T:
    """The dataclass ``base`` (a class: its defaults; an instance: its values) with the values
    of ``table`` (field name → value, nested like a TOML file), every key and value checked.

    ``where`` names the source in errors (``"c.toml"``). An unknown or missing key, a value
    of the wrong type, and an error of the dataclass's ``__post_init__`` raise ConfigError
    naming ``where`` and the key.
    """
    return _build(base, table, where, "")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name → type, of the fields of the dataclass ``cls`` that ``__init__`` takes."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _build(base: Any, table: Any, where: str, path: str) -> Any:
    """:func:`from_table` of the table at key path ``path`` (``""``, or ``"space."`` for the
    table of the field ``space``)."""
    cls = base if isinstance(base, type) else type(base)
    if not isinstance(table, Mapping):
        label = f"{path[:-1]}: " if path else ""
        raise ConfigError(f"{where}: {label}expected a table of settings, got {table!r}")
    section = f" in [{path[:-1]}]" if path else ""
    kinds = field_types(cls)
    values = {}
    for key, value in table.items():
        if key not in kinds:
            raise ConfigError(f"{where}: unknown key {key!r}{section}; known: "
                              f"{', '.join(sorted(kinds))}")
        current = None if base is cls else getattr(base, key)
        values[key] = _value(value, kinds[key], current, where, f"{path}{key}")
    for f in dataclasses.fields(cls) if base is cls else ():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and required and f.name not in values:
            raise ConfigError(f"{where}: missing key {f.name!r}{section}")
    try:
        return cls(**values) if base is cls else dataclasses.replace(base, **values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {path}{error}") from error


def _value(value: Any, kind: Any, current: Any, where: str, key: str) -> Any:
    """``value`` checked against the field type ``kind``; a table for a dataclass field
    updates ``current`` (the field's value, or None to start from the class's defaults)."""
    def refuse(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{where}: {key}: expected {expected}, got {value!r}")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{key}: only X | None unions are supported, got {kind!r}")
        return _value(value, inner[0], current, where, key)
    if dataclasses.is_dataclass(kind):
        return _build(kind if current is None else current, value, where, f"{key}.")
    if kind is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            refuse("a table")
        if len(args) == 2 and args[1] is not Any:
            return {k: _value(v, args[1], None, where, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            refuse("a list")
        return [_value(v, args[0], None, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            refuse("a list")
        if args[-1] is Ellipsis:
            if not value:
                refuse("a non-empty list")
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            refuse(f"a list of {len(args)} values")
        return tuple(_value(v, a, None, where, f"{key}[{i}]")
                     for i, (v, a) in enumerate(zip(value, args)))
    if kind is bool:
        if not isinstance(value, bool):
            refuse("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            refuse("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse("a number")
        if not math.isfinite(value):
            refuse("a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            refuse("a string")
        return value
    raise TypeError(f"{key}: field type {kind!r} is not supported by sane.settings")
