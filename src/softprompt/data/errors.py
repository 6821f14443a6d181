"""The one exception the data package raises for a user's data."""

from __future__ import annotations

import json
from typing import Any

from softprompt.files import one_line

__all__ = ["DataError", "decode_utf8", "json_error", "one_line", "type_name"]


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


def json_error(where: str, exc: ValueError | RecursionError, line: int | None = None) -> DataError:
    """A one-line DataError for text at ``where`` that ``json.loads`` refused.

    ``line`` is the line of the file when only that line was parsed (.jsonl). Besides syntax
    errors, ``json.loads`` raises ValueError for integers of more than 4300 digits and
    RecursionError for nesting deeper than Python's stack.
    """
    if isinstance(exc, json.JSONDecodeError):
        return DataError(f"{where} line {line or exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    where = f"{where} line {line}" if line else where
    if isinstance(exc, RecursionError):
        return DataError(f"{where}: JSON nested too deeply to read")
    return DataError(f"{where}: JSON softprompt cannot read ({one_line(str(exc), 120)})")


def decode_utf8(raw: bytes, where: str) -> str:
    """``raw`` decoded as UTF-8 (a leading BOM dropped); a DataError naming the line and byte if it is not."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{where} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None
