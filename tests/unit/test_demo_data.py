"""The shipped demo datasets (English and Chinese) and their configs: integrity, loading, tokenising.

`make demo` and `make demo-zh` train on data/ with examples/demo.yaml and examples/demo_zh.yaml; these
tests check, without a model, that what they read is what the generators write, that it loads through
data/dataset_info.json and tokenises (Chinese included), and that the question each demo asks after
training is not in its training data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.arguments import parse_args
from softprompt.config import DataArgs, MethodArgs, ModelArgs, TrainArgs
from softprompt.data import load_and_tokenize
from tests.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
CHAT = build_tokenizer(template=True)

# (dataset name, data file, generator, config, make target, the prefix every answer starts with)
DEMOS = [
    ("demo_short_answers", "demo_short_answers.json", "make_demo.py", "demo.yaml", "demo", "Short answer: "),
    ("demo_zh_short_answers", "demo_zh_short_answers.json", "make_demo_zh.py", "demo_zh.yaml", "demo-zh", "简答："),
]
IDS = [d[0] for d in DEMOS]


def rows_of(file: str) -> list[dict]:
    return json.loads((DATA / file).read_text(encoding="utf-8"))


def make_queries(target: str) -> list[str]:
    """The --query strings of one Makefile target's recipe."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(rf"^{re.escape(target)}:.*?\n((?:\t.*\n)+)", text, re.M)
    assert recipe, f"Makefile has no target {target}"
    return re.findall(r'--query "([^"]+)"', recipe.group(1))


@pytest.mark.parametrize("name,file,generator,config,target,prefix", DEMOS, ids=IDS)
def test_shipped_file_is_what_its_generator_writes(tmp_path, name, file, generator, config, target, prefix):
    shutil.copy(DATA / generator, tmp_path / generator)
    subprocess.run([sys.executable, str(tmp_path / generator)], check=True, capture_output=True)
    assert (tmp_path / file).read_bytes() == (DATA / file).read_bytes()


@pytest.mark.parametrize("name,file,generator,config,target,prefix", DEMOS, ids=IDS)
def test_rows_are_alpaca_in_the_house_style(name, file, generator, config, target, prefix):
    info = json.loads((DATA / "dataset_info.json").read_text(encoding="utf-8"))
    assert info[name] == {"file_name": file}
    rows = rows_of(file)
    assert len(rows) == 80
    for i, row in enumerate(rows):
        assert set(row) == {"instruction", "input", "output"}, f"{file} index {i}"
        assert row["instruction"].strip() and row["input"] == "", f"{file} index {i}"
        answer = row["output"].removeprefix(prefix)
        assert answer != row["output"] and answer.strip() and "\n" not in answer, f"{file} index {i}"
    questions = [r["instruction"] for r in rows]
    assert len(set(questions)) == len(questions), f"{file}: a question appears twice"


@pytest.mark.parametrize("name,file,generator,config,target,prefix", DEMOS, ids=IDS)
def test_the_demo_question_is_unseen(name, file, generator, config, target, prefix):
    queries = make_queries(target)
    assert queries, f"make {target} asks no --query"
    questions = {r["instruction"] for r in rows_of(file)}
    assert not questions & set(queries)


def test_chinese_rows_are_chinese():
    for i, row in enumerate(rows_of("demo_zh_short_answers.json")):
        assert re.search(r"[\u4e00-\u9fff]", row["instruction"]), f"index {i}: no Chinese character"
        assert row["output"].endswith("。"), f"index {i}: the answer should end with 。"


@pytest.mark.parametrize("name,file,generator,config,target,prefix", DEMOS, ids=IDS)
def test_config_parses_and_its_data_loads_and_tokenises(monkeypatch, name, file, generator, config, target,
                                                         prefix):
    monkeypatch.chdir(ROOT)  # the configs' dataset_dir is relative to the repository root, as in the Makefile
    classes = [ModelArgs, DataArgs, MethodArgs, TrainArgs]
    (model, data, method, train), _ = parse_args([f"examples/{config}"], classes)
    assert (model.model_name_or_path, data.dataset, data.dataset_dir) == ("smollm2-135m-instruct", name, "data")
    assert method.finetuning_type == "prompt_tuning" and method.num_virtual_tokens == 20
    assert method.prompt_tuning_init == "text"
    assert prefix.strip().rstrip(":：") in method.prompt_tuning_init_text
    first_line = (ROOT / "examples" / config).read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith(f"# make {target}:") and f"softprompt train examples/{config}" in first_line

    train, val = load_and_tokenize(data, CHAT, seed=train.seed)
    assert (len(train), len(val)) == (72, 8)
    answers = {r["output"] for r in rows_of(file)}
    for ex in train + val:
        labelled = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        text = CHAT.decode(labelled)
        assert text.startswith(prefix) and text.removesuffix("<|im_end|>\n") in answers
        assert len(ex["input_ids"]) <= data.cutoff_len
