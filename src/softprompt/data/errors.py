"""The one exception the data package raises for a user's data."""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """A user's data is wrong.

    The message is one line naming the file and row (``data/foo.jsonl line 7``, ``data/foo.json
    index 3``, ``data/foo.csv row 2``) or the dataset, and saying what was expected, e.g.
    ``data/foo.jsonl line 7: 'instruction' must be a string, got int``.
    """


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages ('string', 'int', 'null', ...)."""
    if value is None:
        return "null"
    return {str: "string", dict: "object", list: "list", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


def one_line(text: str, limit: int = 200) -> str:
    """``text`` squeezed onto one line and cut to ``limit`` characters (for quoting in messages)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
