"""Per-method recipes: --learning_rate and --lr_scheduler_type, when not given (as flags or in the YAML file),
come from the method's spec; given ones win; the first log line of training says which is which."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from softprompt import methods
from softprompt.cli import main
from softprompt.config import TrainArgs
from tests.helpers import train_flags, write_alpaca_dataset


def without(argv: list[str], *names: str) -> list[str]:
    """``argv`` less the flags ``names`` and their values."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.lstrip("-") in names:
            skip = True
        else:
            out.append(arg)
    return out


def test_every_method_has_a_recipe_that_fills_only_what_was_not_given():
    names = list(methods.METHODS)
    assert names[:6] == ["prompt_tuning", "p_tuning", "prefix_tuning", "lora", "freeze", "full"]
    for spec in methods.METHODS.values():
        args, line = methods.with_recipe(spec, TrainArgs())
        assert (args.learning_rate, args.lr_scheduler_type) == (spec.recipe.learning_rate, spec.recipe.lr_scheduler_type)
        assert line == (f"{spec.name}: learning_rate {spec.recipe.learning_rate:g} (method default), "
                        f"lr_scheduler_type {spec.recipe.lr_scheduler_type} (method default)")
        args, line = methods.with_recipe(spec, TrainArgs(learning_rate=1e-3))
        assert (args.learning_rate, args.lr_scheduler_type) == (1e-3, spec.recipe.lr_scheduler_type)
        assert "learning_rate 0.001 (given)" in line
        args, _ = methods.with_recipe(spec, TrainArgs(learning_rate=1e-3, lr_scheduler_type="linear"))
        assert (args.learning_rate, args.lr_scheduler_type) == (1e-3, "linear")
    prompt, lora, full = (methods.get(n).recipe for n in ("prompt_tuning", "lora", "full"))
    assert prompt.learning_rate > lora.learning_rate > full.learning_rate  # the orders of magnitude the methods want


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_alpaca_dataset(tmp_path_factory.mktemp("recipes") / "data")


def _rows(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_changing_only_the_method_gives_its_recipe(tiny_dir, data, tmp_path, caplog, method):
    out = tmp_path / method
    argv = without(train_flags(tiny_dir, data, out, finetuning_type=method, max_steps=3), "learning_rate")
    with caplog.at_level(logging.INFO, logger="softprompt"):
        assert main(argv) == 0
    recipe = methods.get(method).recipe
    first = next(r.getMessage() for r in caplog.records if r.name == "softprompt" and r.levelno == logging.INFO)
    assert first == (f"{method}: learning_rate {recipe.learning_rate:g} (method default), "
                     f"lr_scheduler_type {recipe.lr_scheduler_type} (method default)")
    rates = [r["learning_rate"] for r in _rows(out)]
    assert rates[0] == pytest.approx(recipe.learning_rate)  # no warmup: the first update runs at the peak
    if recipe.lr_scheduler_type == "constant":
        assert rates == [rates[0]] * 3
    else:
        assert rates[2] < rates[1] < rates[0]
    saved = yaml.safe_load((out / "training_args.yaml").read_text())  # the run's record holds what it used
    assert (saved["learning_rate"], saved["lr_scheduler_type"]) == (recipe.learning_rate, recipe.lr_scheduler_type)


def test_a_yaml_value_counts_as_given(tiny_dir, data, tmp_path, caplog):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.001\n")
    out = tmp_path / "out"
    argv = without(train_flags(tiny_dir, data, out, max_steps=2), "learning_rate")
    with caplog.at_level(logging.INFO, logger="softprompt"):
        assert main([argv[0], str(config), *argv[1:]]) == 0
    assert "prompt_tuning: learning_rate 0.001 (given), lr_scheduler_type constant (method default)" in caplog.text
    assert [r["learning_rate"] for r in _rows(out)] == [0.001, 0.001]


def test_the_readme_table_is_the_registry():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| method | default learning_rate | default lr_scheduler_type |"):]
    for spec in list(methods.METHODS.values())[:6]:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{spec.name}` |"))
        _, lr, schedule = [cell.strip() for cell in row.strip("|").split("|")]
        assert (float(lr), schedule) == (spec.recipe.learning_rate, spec.recipe.lr_scheduler_type), row
