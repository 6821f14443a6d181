"""The flag/YAML parser that fills the argument dataclasses of :mod:`softprompt.config`.

Each field's attribute docstring is its ``--help`` text; a YAML file gives the same names as keys, and
flags given too override it. A wrong value is an :class:`~softprompt.config.ArgumentError` with a
one-line message naming the argument.

- A field typed ``list[X]`` takes a comma-separated value (``--x 5,10``, ``--x=5,10``) or a YAML list.
- A name several of the classes declare is one flag that fills each of them; where one declares it a
  list and another a single value (a sweep's ``num_virtual_tokens`` beside MethodArgs'), the flag takes
  the list and the single-value field gets its first element, so that its own checks run.
- A command may take one field as a positional (``softprompt inspect ADAPTER``); a positional that ends
  in .yaml/.yml is the config file, as ever.
- A field may bring its own converter, ``dataclasses.field(metadata={"parse": fn})`` (fn: text -> value).
- Flags handed on to child processes: :func:`split_args` reads some classes' flags and returns the rest of
  the arguments as given (``--nproc_per_node``); :meth:`Parsed.argv_without` is what was given less some
  flags (compare's own, for each ``softprompt train`` it starts). Both are one argparse pass over just
  those flags (:func:`_take_flags`), so a flag's value is never mistaken for a flag or the other way round.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import typing
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from softprompt.config import ArgumentError

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Parsed:
    """What the user gave, beside the dataclasses it filled."""

    argv: list[str]
    """The arguments as given."""
    config: str | None
    """The YAML file of arguments, if one was given."""
    yaml: dict[str, Any]
    """The YAML file's arguments (empty without one)."""
    given: frozenset[str]
    """The names the user set: in the YAML file, as flags or as the positional."""
    types: dict[str, Any]
    """Each flag's type (which tells a bare boolean flag from one that takes a value)."""

    def argv_without(self, names: Collection[str], config: bool = True) -> list[str]:
        """``argv`` as given, less the flags ``names`` (with their values) and, unless ``config``, less the
        YAML file: the arguments to hand on to a child process."""
        _, rest = _take_flags(self.argv, {name: self.types[name] for name in names if name in self.types})
        if not config and self.config is not None:
            rest.remove(self.config)  # its first occurrence (a flag value spelled the same, before it, would go)
        return rest


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
    if origin is list:
        return _list_converter(args[0], name)
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
        if isinstance(value, str):
            _check_text(value, name)
        return value

    return conv


def _check_text(text: str, name: str) -> None:
    """A string argument must be text: a byte that is not UTF-8 reaches Python as a lone surrogate
    (``\\udcff``), which no tokenizer, file or HTTP header can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArgumentError(f"--{name} is not UTF-8 text: character {exc.start + 1} is a lone surrogate "
                            "(a byte that is not UTF-8, or half of a pair)") from None  # not echoed: it may be a key


def _list_converter(item: Any, name: str):
    """A function 'a,b' (or a YAML list, or one YAML value) -> [a, b] of ``item``s, raising ArgumentError."""
    check = _converter(item, name)  # each value's own checks: choices, finite numbers

    def conv_list(value: Any) -> list[Any] | None:
        if value is None:
            return None
        texts = [str(v) for v in value] if isinstance(value, list) else str(value).split(",")
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise ArgumentError(f"--{name} needs one or more comma-separated values")
        kind = item if isinstance(item, type) else str
        try:
            values = [kind(t) for t in texts]
        except ValueError:
            raise ArgumentError(f"--{name} expects comma-separated {kind.__name__} values, got {texts}") from None
        return [check(v) for v in values]

    return conv_list


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(t) is list for t in (tp, *typing.get_args(tp)))


def _resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _flag_types(classes: list[type]) -> dict[str, tuple[type, Any]]:
    """{flag name: (the class whose field defines the flag, its type)}: of a name several classes declare,
    the list declaration if there is one, else the first."""
    flags: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        for f, tp in _resolved_fields(cls):
            if f.name not in flags or (_is_list(tp) and not _is_list(flags[f.name][1])):
                flags[f.name] = (cls, tp)
    return flags


def _add_flag(group: Any, name: str, tp: Any, helptext: str | None = None) -> None:
    if tp is bool:  # `--fp16` alone means true, as in LLaMA-Factory; `--fp16 false` is accepted too.
        group.add_argument(f"--{name}", nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL",
                           help=helptext)
    else:
        group.add_argument(f"--{name}", default=argparse.SUPPRESS, help=helptext)


def build_parser(prog: str, description: str, classes: list[type], positional: str | None = None
                 ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("config", nargs="?", help="a YAML file of arguments (flags given too override it)")
    if positional is not None:
        parser.add_argument("positional", nargs="?", metavar=positional.upper(), help=f"the same as --{positional}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    flags = _flag_types(classes)
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        docs = field_docs(cls)
        for f, tp in _resolved_fields(cls):
            if flags[f.name][0] is cls:
                default = f.default if f.default is not dataclasses.MISSING else None
                _add_flag(group, f.name, tp, f"{docs.get(f.name, '')} (default: {default})")
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
    argv: list[str], classes: list[type], prog: str = "softprompt", description: str = "",
    positional: str | None = None,
) -> tuple[list[Any], Parsed]:
    """Fill each dataclass in ``classes`` from an optional YAML file, then the positional (the field named
    ``positional``, if any), then flags (the later win); return them and what was given.

    Unknown keys in the YAML or unknown flags are an ArgumentError naming them.
    """
    parser = build_parser(prog, description, classes, positional)
    try:
        ns, unknown = parser.parse_known_args(_attach_negative_values(argv))
    except argparse.ArgumentError as exc:  # one line, not argparse's usage block
        raise ArgumentError(f"{exc} (see `{prog} --help`)") from None
    if unknown:
        raise ArgumentError(f"unknown argument {unknown[0]!r} (see `{prog} --help`)")
    flags = vars(ns)
    config, word = _positionals(flags.pop("config"), flags.pop("positional", None), positional is not None, prog)
    flags.pop("debug")
    yaml_values = load_yaml_args(config) if config else {}
    values = {**yaml_values, **({positional: word} if word is not None else {}), **flags}
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    stray = sorted(set(values) - known)
    if stray:
        raise ArgumentError(f"{config}: unknown argument {stray[0]!r} (see `{prog} --help`)")
    types = {name: tp for name, (_, tp) in _flag_types(classes).items()}
    return _fill(classes, values), Parsed(list(argv), config, yaml_values, frozenset(values), types)


def split_args(argv: list[str], classes: list[type]) -> tuple[list[Any], list[str]]:
    """Fill ``classes`` from their flags in ``argv`` alone; the other arguments pass through, as given,
    for a child process (flags of other classes and unknown ones are not read here)."""
    values, rest = _take_flags(argv, {name: tp for name, (_, tp) in _flag_types(classes).items()})
    return _fill(classes, values), rest


def _take_flags(argv: list[str], types: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """({name: text} of the flags ``types`` names, the rest of ``argv`` in order): one argparse pass that
    knows only those flags, each taking a value as it does in the full parser."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name, tp in types.items():
        _add_flag(parser, name, tp)
    try:
        ns, rest = parser.parse_known_args(_attach_negative_values(argv))
    except argparse.ArgumentError as exc:
        raise ArgumentError(str(exc)) from None
    return vars(ns), rest


def _positionals(first: str | None, second: str | None, has_field: bool, prog: str) -> tuple[str | None, str | None]:
    """(the YAML file, the positional field's value) from the words given without a flag: without a positional
    field the one word is the YAML file; with one, a word ending in .yaml/.yml is the file, the other the field."""
    if not has_field:
        return first, None
    words = [w for w in (first, second) if w is not None]
    config = next((w for w in words if w.endswith(YAML_SUFFIXES)), None)
    if config is not None:
        words.remove(config)
    if len(words) > 1:
        raise ArgumentError(f"unknown argument {words[1]!r} (see `{prog} --help`)")
    return config, (words[0] if words else None)


def _fill(classes: list[type], values: dict[str, Any]) -> list[Any]:
    """One instance of each class, its fields converted from ``values`` (name -> text or YAML value)."""
    flags = _flag_types(classes)
    out = []
    for cls in classes:
        kwargs = {}
        for f, tp in _resolved_fields(cls):
            if f.name not in values:
                continue
            value, flag_type = values[f.name], flags[f.name][1]
            if _is_list(flag_type) and not _is_list(tp):  # a list flag: this single-value field gets its first
                value = _converter(flag_type, f.name)(value)[0]
            kwargs[f.name] = (f.metadata.get("parse") or _converter(tp, f.name))(value)
        out.append(cls(**kwargs))
    return out


def load_yaml_args(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArgumentError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ArgumentError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ArgumentError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArgumentError(f"{path}: expected a mapping of argument: value, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}
