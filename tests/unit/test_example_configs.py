"""The training recipes shipped in examples/ parse as `softprompt train` arguments (a renamed or mistyped key
would otherwise surface only when a user runs them), and say what they measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt.arguments import parse_args
from softprompt.config import DataArgs, MethodArgs, ModelArgs, TrainArgs

ROOT = Path(__file__).resolve().parents[2]
RECIPES = [ROOT / "examples" / "sst2.yaml", *sorted((ROOT / "examples" / "recipes").glob("*.yaml"))]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_parses_as_train_arguments_and_reports_its_numbers(path: Path) -> None:
    (model, data, method, train), _ = parse_args([str(path)], [ModelArgs, DataArgs, MethodArgs, TrainArgs])
    assert model.model_name_or_path == "smollm2-135m-instruct" and data.dataset and train.output_dir
    assert method.finetuning_type in ("prompt_tuning", "prefix_tuning")
    header = path.read_text().split("###")[0]
    assert "%" in header and "softprompt eval" in header  # the numbers it gave and the command that gives them


def test_every_task_type_has_a_recipe() -> None:
    names = {p.name for p in RECIPES}
    assert {"sst2.yaml", "agnews.yaml", "alpaca_en.yaml", "alpaca_zh.yaml"} <= names
