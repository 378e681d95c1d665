"""Checked settings: TOML files read into frozen dataclasses, every value type-checked.

A settings table maps field names to values; :func:`replace_checked` applies it to a frozen
dataclass given the type each field accepts, and raises :class:`~sane.errors.ConfigError`
naming the file and key of an unknown key or a value of the wrong type. Field types are
written as: a Python type (``int``, ``float``, ``bool``, ``str``), ``(T, ...)`` for a
non-empty list of ``T``, ``(T, n)`` for a list of ``n`` values of ``T``, ``("optional", T)``
for ``T`` or None (None comes only from overrides and stored manifests: TOML has no null).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sane.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    """The table in the TOML file ``path``; ConfigError naming the file if it is malformed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error


def replace_checked(obj: Any, table: Any, types: Mapping[str, Any], where: str) -> Any:
    """``dataclasses.replace(obj, **table)`` after checking every key and value of ``table``
    against ``types`` (field name → field type, see the module docstring)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of settings")
    changes = {}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(types))}")
        changes[key] = coerce(value, types[key], f"{where} {key}")
    return dataclasses.replace(obj, **changes)


def coerce(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the field type ``kind`` (lists become tuples)."""
    if isinstance(kind, tuple) and kind[0] == "optional":
        return None if value is None else coerce(value, kind[1], where)
    if isinstance(kind, tuple):
        item, length = kind
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if length is ... and not value:
            raise ConfigError(f"{where}: expected a non-empty list")
        if length is not ... and len(value) != length:
            raise ConfigError(f"{where}: expected a list of {length} values, got {value!r}")
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
