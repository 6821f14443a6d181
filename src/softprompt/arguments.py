"""The flag/YAML parser that fills the argument dataclasses of :mod:`softprompt.config`.

Each field's attribute docstring is its ``--help`` text; a YAML file gives the same names as keys, and
flags given too override it. A wrong value is an :class:`~softprompt.config.ArgumentError` with a
one-line message naming the argument.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from softprompt.config import ArgumentError


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: {field name: the string literal after it}."""
    docs: dict[str, str] = {}
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _converter(tp: Any, name: str):
    """A function str -> value for a field's type, raising ArgumentError on bad text."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is Literal:
        choices = typing.get_args(tp)

        def conv_choice(text: str) -> str:
            if text not in choices:
                raise ArgumentError(f"--{name} must be one of {', '.join(choices)}; got {text!r}")
            return text

        return conv_choice
    if origin is not None and args:  # Optional[X] / X | None
        return _converter(args[0], name)
    if tp is bool:
        def conv_bool(text: str | bool) -> bool:
            if isinstance(text, bool):
                return text
            low = str(text).lower()
            if low in ("1", "true", "yes", "y", "on"):
                return True
            if low in ("0", "false", "no", "n", "off"):
                return False
            raise ArgumentError(f"--{name} expects true or false, got {text!r}")

        return conv_bool

    def conv(text: Any) -> Any:
        if text is None:
            return None
        if tp is int and isinstance(text, float) and not text.is_integer():  # YAML 2.5 is not an int
            raise ArgumentError(f"--{name} expects int, got {text!r}")
        try:
            value = tp(text)
        except (TypeError, ValueError):
            raise ArgumentError(f"--{name} expects {tp.__name__}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgumentError(f"--{name} must be a finite number, got {value}")
        return value

    return conv


def _resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def build_parser(prog: str, description: str, classes: list[type]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("config", nargs="?", help="a YAML file of arguments (flags given too override it)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        docs = field_docs(cls)
        for f, tp in _resolved_fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            helptext = f"{docs.get(f.name, '')} (default: {default})"
            if tp is bool:
                # `--fp16` alone means true, as in LLaMA-Factory; `--fp16 false` is accepted too.
                group.add_argument(f"--{f.name}", nargs="?", const="true", default=argparse.SUPPRESS,
                                   metavar="BOOL", help=helptext)
            else:
                group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=helptext)
    return parser


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--flag -1e-3`` as ``--flag=-1e-3``: argparse reads a value that starts with '-' as an option
    unless it looks like a plain negative integer or decimal, so the range check never saw it."""
    out: list[str] = []
    for arg in argv:
        prev = out[-1] if out else ""
        if arg.startswith("-") and prev.startswith("--") and "=" not in prev:
            try:
                float(arg)
            except ValueError:
                pass
            else:
                out[-1] = f"{prev}={arg}"
                continue
        out.append(arg)
    return out


def parse_args(
    argv: list[str], classes: list[type], prog: str = "softprompt", description: str = ""
) -> tuple[list[Any], argparse.Namespace]:
    """Fill each dataclass in ``classes`` from an optional YAML file then flags (flags win).

    Unknown keys in the YAML or unknown flags are an ArgumentError naming them.
    """
    parser = build_parser(prog, description, classes)
    try:
        ns, unknown = parser.parse_known_args(_attach_negative_values(argv))
    except argparse.ArgumentError as exc:  # one line, not argparse's usage block
        raise ArgumentError(f"{exc} (see `{prog} --help`)") from None
    if unknown:
        raise ArgumentError(f"unknown argument {unknown[0]!r} (see `{prog} --help`)")
    values: dict[str, Any] = {}
    if ns.config:
        values.update(load_yaml_args(ns.config))
    values.update({k: v for k, v in vars(ns).items() if k not in ("config", "debug")})
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    stray = sorted(set(values) - known)
    if stray:
        raise ArgumentError(f"{ns.config}: unknown argument {stray[0]!r} (see `{prog} --help`)")
    out = []
    for cls in classes:
        kwargs = {}
        for f, tp in _resolved_fields(cls):
            if f.name in values:
                kwargs[f.name] = _converter(tp, f.name)(values[f.name])
        out.append(cls(**kwargs))
    return out, ns


def load_yaml_args(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArgumentError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ArgumentError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArgumentError(f"{path}: expected a mapping of argument: value, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}
