"""What the reports softprompt writes share: the number format of their tables, and matplotlib set up
for files (no display)."""

from __future__ import annotations

from typing import Any


def number(value: Any, decimals: int | None = None) -> str:
    """A table cell: '' for None; a float with ``decimals`` places (default: 4 below 10, else 2), or 3
    significant digits from a million on; anything else as ``str``."""
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    places = decimals if decimals is not None else (4 if abs(value) < 10 else 2)
    return f"{value:.{places}f}"


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
