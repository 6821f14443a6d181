"""Every method on the default model (SmolLM2-135M-Instruct GGUF): 4 steps of `softprompt train`,
then what it wrote is loaded as its users would load it (PEFT on the ``gguf_file=`` base for
adapters, transformers for the model folders of freeze / full), and their greedy answers equal
`softprompt predict`'s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.model import resolve_gguf_alias
from tests.helpers import assert_greedy_equals_predictions

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.default_model, pytest.mark.slow]
FLAGS = {
    "prompt_tuning": ["--num_virtual_tokens", "10", "--learning_rate", "3e-2"],
    "p_tuning": ["--num_virtual_tokens", "10", "--learning_rate", "1e-3"],
    "prefix_tuning": ["--num_virtual_tokens", "10", "--learning_rate", "1e-2"],
    "lora": ["--lora_rank", "4", "--learning_rate", "1e-3"],
    "freeze": ["--freeze_trainable_layers", "1", "--learning_rate", "1e-4"],
    "full": ["--learning_rate", "2e-5"],
}


@pytest.mark.parametrize("method", list(FLAGS))
def test_each_method_trains_4_steps_and_loads_where_its_users_load_it(method, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / method
    assert main(["train", "--model_name_or_path", "smollm2-135m-instruct", "--dataset", "demo_short_answers",
                 "--dataset_dir", str(REPO / "data"), "--finetuning_type", method, *FLAGS[method],
                 "--output_dir", str(out), "--per_device_train_batch_size", "2", "--max_steps", "4",
                 "--cutoff_len", "64", "--logging_steps", "1", "--plot_loss", "false"]) == 0
    assert main(["predict", "--adapter_name_or_path", str(out), "--dataset", "demo_short_answers",
                 "--dataset_dir", str(REPO / "data"), "--max_samples", "3", "--output_dir", str(tmp_path / "pred"),
                 "--per_device_eval_batch_size", "3", "--max_new_tokens", "12"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "pred" / "generated_predictions.jsonl").read_text().splitlines()]

    src = resolve_gguf_alias("smollm2-135m-instruct")
    if (out / "adapter_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(src.folder, gguf_file=src.file)
        base = AutoModelForCausalLM.from_pretrained(src.folder, gguf_file=src.file)
        model = PeftModel.from_pretrained(base, str(out)).eval()
    else:
        tok = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(rows) == 3
    assert_greedy_equals_predictions(model, tok, rows, max_new_tokens=12)
