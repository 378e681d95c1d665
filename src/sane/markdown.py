"""Markdown tables, the one way every report of the project writes them.

>>> print(table(["model", "accuracy"], [["m0", 0.91234], ["m1", None]]))
| model | accuracy |
|---|---:|
| m0 | 0.9123 |
| m1 |  |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any, digits: int = 4) -> str:
    """``value`` as a table cell: None empty, floats with ``digits`` decimals, the rest as
    ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 4,
          text_columns: int = 1) -> str:
    """A Markdown table: the first ``text_columns`` columns left-aligned, the others
    right-aligned (numbers); cells formatted by :func:`cell`."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)
