"""End to end on the default model (SmolLM2-135M-Instruct GGUF): train, then PEFT loads it as a
PEFT user would (``gguf_file=``) and its greedy generation equals ``softprompt predict``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.model import resolve_gguf_alias
from tests.helpers import assert_greedy_equals_predictions

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def trained_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "pt100"
    argv = ["train", "--model_name_or_path", "smollm2-135m-instruct", "--dataset", "demo_short_answers",
            "--dataset_dir", str(REPO / "data"), "--finetuning_type", "prompt_tuning",
            "--num_virtual_tokens", "100", "--prompt_tuning_init", "text",
            "--prompt_tuning_init_text", "Answer briefly.", "--output_dir", str(out), "--per_device_train_batch_size", "2",
            "--max_steps", "2", "--learning_rate", "3e-2", "--cutoff_len", "64", "--logging_steps", "1",
            "--fp16"]
    assert main(argv) == 0
    return out


def test_output_is_small_and_complete(trained_default):
    size = (trained_default / "adapter_model.safetensors").stat().st_size
    assert size < 1_000_000  # 100 x 576 fp32 = 230 KB
    assert (trained_default / "training_loss.png").is_file() and (trained_default / "trainer_log.jsonl").is_file()
    config = json.loads((trained_default / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == 100 and config["token_dim"] == 576
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"


def test_peft_with_gguf_base_generates_what_softprompt_predicts(trained_default, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_gguf_alias("smollm2-135m-instruct")
    base = AutoModelForCausalLM.from_pretrained(src.folder, gguf_file=src.file)
    tok = AutoTokenizer.from_pretrained(src.folder, gguf_file=src.file)
    model = PeftModel.from_pretrained(base, str(trained_default)).eval()

    assert main(["predict", "--adapter_name_or_path", str(trained_default), "--dataset", "demo_short_answers",
                 "--dataset_dir", str(REPO / "data"), "--max_samples", "3", "--output_dir", str(tmp_path),
                 "--per_device_eval_batch_size", "3", "--max_new_tokens", "12"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert_greedy_equals_predictions(model, tok, rows, max_new_tokens=12)


@pytest.mark.slow
def test_the_issue_command_runs(tmp_path):
    shared = REPO.parent / "shared" / "datasets"
    if not (shared / "alpaca_en_demo.json").is_file():
        pytest.skip(f"needs {shared} (the dev workspace's shared datasets)")
    out = tmp_path / "prompt-tuning"
    argv = ("train --model_name_or_path smollm2-135m-instruct --do_train --dataset alpaca_en_demo "
            f"--dataset_dir {shared} --finetuning_type prompt_tuning --output_dir {out} --overwrite_cache "
            "--per_device_train_batch_size 4 --gradient_accumulation_steps 8 --lr_scheduler_type cosine "
            "--logging_steps 10 --save_steps 100 --learning_rate 5e-3 --num_train_epochs 3.0 "
            "--max_source_length 512 --max_target_length 512 --max_steps 4 --val_size 0.1 --fp16").split()
    assert main(argv) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "training_loss.png",
            "trainer_log.jsonl"} <= set(os.listdir(out))
