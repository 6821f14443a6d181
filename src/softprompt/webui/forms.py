"""Forms made from the argument dataclasses, and the way back: form values -> CLI flags -> the dataclasses.

Nothing here knows Gradio. A form field is one dataclass field (:class:`FormField`); its help text is the
field's attribute docstring, as in ``--help``. Values go back through the CLI's own parser
(:func:`softprompt.arguments.parse_args`), so a bad value gets the CLI's one-line message.
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from softprompt.arguments import field_docs, load_yaml_args, parse_args
from softprompt.config import ArgumentError, DataArgs, MethodArgs, ModelArgs, TrainArgs
from softprompt.methods import REGISTRY, resolve

TRAIN_SECTIONS: tuple[tuple[str, type], ...] = (
    ("model", ModelArgs), ("method", MethodArgs), ("dataset", DataArgs), ("training", TrainArgs))
"""The train form's sections, in the order of the YAML examples (examples/*.yaml: ### model, ### method, ...)."""
TRAIN_CLASSES = [ModelArgs, DataArgs, MethodArgs, TrainArgs]
"""In the order ``softprompt train`` parses them."""
CHOICE_FIELDS = {"finetuning_type": lambda: tuple(REGISTRY)}
"""Fields whose choices come from elsewhere than a Literal type (the method registry)."""


@dataclass(frozen=True)
class FormField:
    """One input of a form: a field of an argument dataclass."""

    name: str
    """The field's name, which is the flag and the YAML key."""
    kind: Literal["bool", "choice", "text"]
    """A checkbox, a dropdown, or a text box (numbers too: the CLI's parser reads the text)."""
    default: Any
    """The dataclass default (None: unset)."""
    help: str
    """The attribute docstring: the ``--help`` text."""
    choices: tuple[str, ...] = ()
    """The values of a dropdown."""

    def initial(self) -> Any:
        """What the input shows at first: the default, as text for a text box ('' for unset)."""
        if self.kind == "bool":
            return bool(self.default)
        return "" if self.default is None else str(self.default)


def form_fields(cls: type) -> list[FormField]:
    """The form fields of an argument dataclass, in its order."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        literal = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is Literal]
        if f.name in CHOICE_FIELDS:
            kind, choices = "choice", CHOICE_FIELDS[f.name]()
        elif literal:
            kind, choices = "choice", tuple(str(c) for c in typing.get_args(literal[0]))
        else:
            kind, choices = ("bool" if tp is bool else "text"), ()
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(FormField(f.name, kind, default, docs.get(f.name, ""), choices))
    return out


def method_only_fields() -> set[str]:
    """The MethodArgs fields some method reads (the others, such as finetuning_type, concern every method)."""
    return {name for spec in REGISTRY.values() for name in spec.arguments}


def shown_for(method: str, name: str) -> bool:
    """Whether the field ``name`` belongs on the form when ``method`` is the chosen finetuning_type."""
    spec = REGISTRY.get(method)
    return name not in method_only_fields() or (spec is not None and name in spec.arguments)


def changed_values(fields: list[FormField], raw: list[Any], method: str | None = None) -> dict[str, Any]:
    """{name: value} of the inputs that differ from their defaults (a blank text box is unset); with
    ``method``, fields only other methods read are left out, as the form hides them."""
    out: dict[str, Any] = {}
    for f, value in zip(fields, raw):
        if method is not None and not shown_for(method, f.name):
            continue
        if f.kind == "bool":
            if bool(value) != bool(f.default):
                out[f.name] = bool(value)
            continue
        text = "" if value is None else str(value).strip()
        if text and text != f.initial():
            out[f.name] = text
    return out


def to_argv(values: dict[str, Any]) -> list[str]:
    """Flags for ``values``: ``--name value`` each, a boolean as true/false."""
    argv: list[str] = []
    for name, value in values.items():
        argv += [f"--{name}", ("true" if value else "false") if isinstance(value, bool) else str(value)]
    return argv


def command_line(command: str, argv: list[str]) -> str:
    """The shell line a user would type: ``softprompt <command> --flag value ...``."""
    return shlex.join(["softprompt", command, *argv])


def check_train(argv: list[str]) -> list[Any]:
    """The four dataclasses of ``softprompt train`` filled from ``argv``, the method checked as training
    checks it; an ArgumentError with the CLI's one-line message otherwise."""
    (model, data, method, train), _ = parse_args(argv, TRAIN_CLASSES, "softprompt train")
    return [model, data, resolve(method), train]


def check_command(command: str, argv: list[str], classes: list[type], positional: str | None = None) -> list[Any]:
    """``argv`` parsed for ``softprompt <command>`` as the CLI parses it (an ArgumentError otherwise)."""
    return parse_args(argv, classes, f"softprompt {command}", positional=positional)[0]


def save_yaml(values: dict[str, Any], path: str) -> Path:
    """Write ``values`` (the changed fields) as a YAML config ``softprompt train FILE`` reads."""
    if not path.strip().endswith((".yaml", ".yml")):
        raise ArgumentError(f"{path or '(empty)'}: name a .yaml file to save the config to")
    out = Path(path.strip())
    out.parent.mkdir(parents=True, exist_ok=True)
    typed = {k: _yaml_value(v) for k, v in values.items()}
    out.write_text(yaml.safe_dump(typed, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def _yaml_value(value: Any) -> Any:
    """A form value as YAML would type it (``'5'`` -> 5, ``'3e-2'`` -> 0.03, text stays text)."""
    if isinstance(value, bool):
        return value
    try:
        parsed = yaml.safe_load(str(value))
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else value


def load_yaml(path: str, fields: list[FormField]) -> list[Any]:
    """The input values of a form for the YAML config at ``path`` (fields it does not name: their defaults);
    an ArgumentError for a missing or bad file or a key no field has."""
    values = load_yaml_args(path.strip())
    names = {f.name for f in fields}
    stray = sorted(set(values) - names)
    if stray:
        raise ArgumentError(f"{path}: unknown argument {stray[0]!r} (see `softprompt train --help`)")
    out = []
    for f in fields:
        if f.name not in values:
            out.append(f.initial())
        elif f.kind == "bool":
            out.append(str(values[f.name]).lower() in ("1", "true", "yes", "y", "on"))
        else:
            out.append("" if values[f.name] is None else str(values[f.name]))
    return out
