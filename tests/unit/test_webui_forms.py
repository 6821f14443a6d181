"""The web page's non-browser parts: its strings in both languages, the train form made from the argument
dataclasses, and its way back to the CLI's parser (same values, same one-line errors)."""

from __future__ import annotations

import dataclasses
import re
import string
from pathlib import Path

import pytest

from softprompt.arguments import field_docs, parse_args
from softprompt.config import ArgumentError, DataArgs, MethodArgs, ModelArgs, TrainArgs
from softprompt.methods import REGISTRY
from softprompt.webui import forms
from softprompt.webui.strings import STRINGS, tr

WEBUI = Path(__file__).resolve().parents[2] / "src" / "softprompt" / "webui"
KEY = re.compile(r"""["']((?:app|tab|train|eval|chat|compare|inspect|serve|export|status|msg)\.[a-z_.]+)["']""")


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_string_in_both_languages_with_the_same_placeholders():
    en, zh = STRINGS["en"], STRINGS["zh"]
    assert set(en) == set(zh)
    for key in en:
        assert en[key].strip() and zh[key].strip(), key
        assert _fields(en[key]) == _fields(zh[key]), key
    assert tr("zh", "msg.finished", where="x") == "已完成：x"


def test_every_key_the_page_uses_exists():
    used = set()
    for path in WEBUI.glob("*.py"):
        if path.name != "strings.py":
            used |= {k for k in KEY.findall(path.read_text()) if not k.endswith((".md", ".png", ".json"))}
    used |= {f"train.section.{name}" for name, _ in forms.TRAIN_SECTIONS}  # built with an f-string
    assert len(used) > 40
    assert sorted(used - set(STRINGS["en"])) == []


def test_train_form_has_every_argument_with_its_help():
    for _, cls in forms.TRAIN_SECTIONS:
        fields = forms.form_fields(cls)
        assert [f.name for f in fields] == [f.name for f in dataclasses.fields(cls)]
        docs = field_docs(cls)
        assert all(f.help == docs[f.name] for f in fields)
    kinds = {f.name: f for cls in forms.TRAIN_CLASSES for f in forms.form_fields(cls)}
    assert kinds["finetuning_type"].choices == tuple(REGISTRY)
    assert kinds["lr_scheduler_type"].choices == ("cosine", "linear", "constant", "constant_with_warmup")
    assert kinds["fp16"].kind == "bool" and kinds["learning_rate"].kind == "text"


def test_method_fields_follow_the_registry():
    assert forms.shown_for("lora", "lora_rank") and not forms.shown_for("prompt_tuning", "lora_rank")
    assert forms.shown_for("prompt_tuning", "num_virtual_tokens") and not forms.shown_for("lora", "num_virtual_tokens")
    assert all(forms.shown_for(m, "finetuning_type") for m in REGISTRY)
    for spec in REGISTRY.values():
        assert {n for n in forms.method_only_fields() if forms.shown_for(spec.name, n)} == set(spec.arguments)


def _raw(changes: dict) -> tuple[list, list]:
    fields = [f for cls in forms.TRAIN_CLASSES for f in forms.form_fields(cls)]
    return fields, [changes.get(f.name, f.initial()) for f in fields]


def test_form_values_become_the_cli_arguments():
    fields, raw = _raw({"dataset": "toy", "learning_rate": "3e-2", "lora_rank": "16", "fp16": True,
                        "num_virtual_tokens": " 8 ", "output_dir": "output"})
    values = forms.changed_values(fields, raw, "prompt_tuning")
    # unchanged fields and those of another method are left out; text is stripped
    assert values == {"dataset": "toy", "learning_rate": "3e-2", "fp16": True, "num_virtual_tokens": "8"}
    argv = forms.to_argv(values)
    model, data, method, train = forms.check_train(argv)
    expected = parse_args(["--dataset", "toy", "--learning_rate", "0.03", "--fp16", "--num_virtual_tokens", "8"],
                          [ModelArgs, DataArgs, MethodArgs, TrainArgs])[0]
    assert [model, data, method, train] == expected
    assert forms.command_line("train", argv) == ("softprompt train --dataset toy --num_virtual_tokens 8 "
                                                 "--learning_rate 3e-2 --fp16 true")


@pytest.mark.parametrize("name,value,message", [
    ("learning_rate", "fast", "--learning_rate expects float, got 'fast'"),
    ("learning_rate", "-1", "--learning_rate must be positive, got -1.0"),
    ("lr_scheduler_type", "cosine_restarts", "--lr_scheduler_type must be one of cosine, linear, constant, "
                                             "constant_with_warmup; got 'cosine_restarts'"),
    ("finetuning_type", "adapters", "--finetuning_type must be one of " + ", ".join(REGISTRY) + "; got 'adapters'"),
])
def test_bad_values_get_the_cli_message(name, value, message):
    fields, raw = _raw({name: value})
    with pytest.raises(ArgumentError) as form_error:
        forms.check_train(forms.to_argv(forms.changed_values(fields, raw)))
    assert str(form_error.value) == message


def test_yaml_save_and_load_round_trip(tmp_path):
    fields, raw = _raw({"dataset": "toy", "learning_rate": "0.03", "max_steps": "5", "plot_loss": False,
                        "finetuning_type": "lora", "lora_rank": "4", "prompt_tuning_init_text": "Answer:"})
    values = forms.changed_values(fields, raw, "lora")
    path = forms.save_yaml(values, str(tmp_path / "cfg" / "run.yaml"))
    assert "learning_rate: 0.03\n" in path.read_text() and "max_steps: 5\n" in path.read_text()
    parsed = parse_args([str(path)], [ModelArgs, DataArgs, MethodArgs, TrainArgs])[0]  # softprompt train FILE
    assert parsed[2].lora_rank == 4 and parsed[3].max_steps == 5 and parsed[3].plot_loss is False
    loaded = forms.load_yaml(str(path), fields)
    assert forms.changed_values(fields, loaded, "lora") == values
    (tmp_path / "bad.yaml").write_text("learning_rat: 1\n")
    with pytest.raises(ArgumentError, match="unknown argument 'learning_rat'"):
        forms.load_yaml(str(tmp_path / "bad.yaml"), fields)
    with pytest.raises(ArgumentError, match="name a .yaml file"):
        forms.save_yaml(values, str(tmp_path / "run.txt"))


def test_every_choice_input_accepts_its_initial_value():
    """A dropdown whose default is unset (lr_scheduler_type: the method's recipe) offers '' among its choices:
    Gradio refuses a value outside them, and the whole form's event would fail in the page."""
    from softprompt.webui.widgets import field_input

    for cls in (ModelArgs, DataArgs, MethodArgs, TrainArgs):
        for f in forms.form_fields(cls):
            if f.kind == "choice":
                box = field_input(f)
                values = [c[1] if isinstance(c, tuple) else c for c in box.choices]
                assert f.initial() in values, (f.name, f.initial(), values)
