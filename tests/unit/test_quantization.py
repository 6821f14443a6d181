"""--quantization_bit 8|4 on the tiny model (bitsandbytes' CPU backend here): the frozen base is quantized as it
loads, the soft prompt stays fp32, its gradient flows through the quantized layers and its loss falls; chat,
predict, eval and the server's predictor load a quantized base; LoRA on it is QLoRA; what cannot work is one line."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.cli import main
from softprompt.config import ArgumentError, MethodArgs, ModelArgs
from softprompt.engine.forward import AdaptedLM
from softprompt.methods import METHODS
from softprompt.model import load_model
from softprompt.multitask import MultiTaskPredictor
from tests.helpers import train_flags, write_alpaca_dataset

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is installed by make setup (extra 'quantization')")
LAYER = {8: bnb.nn.Linear8bitLt, 4: bnb.nn.Linear4bit}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_alpaca_dataset(tmp_path_factory.mktemp("quant") / "data", n=4)  # one batch: the same rows each step


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
            if '"loss"' in line]


@pytest.mark.parametrize("bits", [8, 4])
def test_linear_layers_are_quantized_and_the_rest_is_not(tiny_dir, bits):
    lm = load_model(str(tiny_dir), quantization_bit=bits)
    layer = lm.model.model.layers[0]
    assert all(isinstance(m, LAYER[bits]) for m in (layer.self_attn.q_proj, layer.mlp.down_proj))
    assert not isinstance(lm.model.lm_head, LAYER[bits])  # bitsandbytes keeps the head, as transformers chooses
    assert lm.model.get_input_embeddings().weight.dtype == torch.float32
    assert lm.quantization_bit == bits and not any(p.requires_grad for p in lm.model.parameters())


@pytest.mark.parametrize("bits", [8, 4])
def test_prompt_gradient_flows_through_the_quantized_base(tiny_dir, bits):
    """Also after a forward without gradient: bitsandbytes' CPU backend would then repack 4-bit weights for an
    inference kernel that has no backward (softprompt turns that off), and the prompt's gradient would stop."""
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = {}
    for b in (None, bits):
        base = load_model(str(tiny_dir), quantization_bit=b).model
        prompt = METHODS["prompt_tuning"].create(base, None, MethodArgs(num_virtual_tokens=4),
                                                 torch.Generator().manual_seed(0))
        model = AdaptedLM(base, prompt)
        with torch.no_grad():  # as validation or generation does first: nothing of it may stop the gradient later
            model(ids, torch.ones_like(ids), ids)
        loss_sum, n = model(ids, torch.ones_like(ids), ids)
        (loss_sum / n).backward()
        (param,) = [p for p in prompt.parameters() if p.requires_grad]
        assert param.dtype == torch.float32 and all(p.grad is None for p in base.parameters())
        grads[b] = param.grad
    assert torch.isfinite(grads[bits]).all() and grads[bits].norm() > 0
    cosine = torch.nn.functional.cosine_similarity(grads[bits].flatten(), grads[None].flatten(), dim=0)
    assert cosine > 0.9, f"{bits}-bit prompt gradient points elsewhere than the fp32 one (cosine {cosine:.3f})"


TRAIN = dict(max_steps=8, learning_rate=0.1, lr_scheduler_type="constant")


@pytest.fixture(scope="module")
def fp32_losses(tiny_dir, data, tmp_path_factory) -> list[float]:
    out = tmp_path_factory.mktemp("fp32") / "out"
    assert main(train_flags(tiny_dir, data, out, **TRAIN)) == 0
    return _losses(out)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_prompt_trains_on_a_quantized_base_and_chat_and_predict_use_it(tiny_dir, data, tmp_path, bits, capsys,
                                                                          fp32_losses):
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data, out, quantization_bit=bits, **TRAIN)) == 0
    losses = _losses(out)
    assert len(losses) == 8 and max(abs(a - b) for a, b in zip(losses, fp32_losses)) < 0.01, (losses, fp32_losses)
    assert losses[1] - losses[-1] > 0.5 * (fp32_losses[1] - fp32_losses[-1]), (losses, fp32_losses)  # keeps falling
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING"
    common = ["--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(out),
              "--quantization_bit", str(bits), "--max_new_tokens", "4"]
    capsys.readouterr()
    assert main(["chat", *common, "--query", "What is 2 + 2?"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["predict", *common, "--dataset", "toy", "--dataset_dir", str(data),
                 "--output_dir", str(tmp_path / "pred")]) == 0
    rows = (tmp_path / "pred" / "generated_predictions.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all(json.loads(r)["predict"] for r in rows)


def test_eval_and_the_servers_predictor_load_a_quantized_base(tiny_dir, data, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--model_name_or_path", str(tiny_dir), "--quantization_bit", "8", "--dataset", "toy",
                 "--dataset_dir", str(data), "--task", "loss", "--output_dir", str(out)]) == 0
    assert (out / "eval_results.json").is_file()
    predictor = MultiTaskPredictor.load(str(tiny_dir), quantization_bit=4)
    assert predictor.lm.quantization_bit == 4
    assert isinstance(predictor.lm.model.model.layers[0].mlp.up_proj, LAYER[4])


def test_lora_on_a_4_bit_base_is_qlora(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "qlora"
    assert main(train_flags(tiny_dir, data, out, quantization_bit=4, finetuning_type="lora", lora_rank=4,
                            max_steps=6, learning_rate=5e-2, lr_scheduler_type="constant")) == 0
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    capsys.readouterr()
    assert main(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(out),
                 "--quantization_bit", "4", "--max_new_tokens", "4", "--query", "Name a color."]) == 0


def _one_line_refusal(capsys, argv, *words) -> None:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("softprompt")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert all(w in err[0] for w in words), err[0]


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_methods_that_train_the_base_are_refused_on_a_quantized_base(tiny_dir, data, tmp_path, capsys, method):
    argv = train_flags(tiny_dir, data, tmp_path / "out", quantization_bit=8, finetuning_type=method)
    _one_line_refusal(capsys, argv, f"--finetuning_type {method}", "--quantization_bit 8", "lora")
    assert not (tmp_path / "out").exists()


def test_sharding_a_quantized_base_is_refused(tiny_dir, data, tmp_path, capsys):
    _one_line_refusal(capsys, train_flags(tiny_dir, data, tmp_path / "out", quantization_bit=4, fsdp="full_shard"),
                      "--fsdp", "--quantization_bit")


def test_bits_other_than_8_or_4_and_a_missing_bitsandbytes_are_one_line(tiny_dir, data, tmp_path, capsys,
                                                                         monkeypatch):
    with pytest.raises(ArgumentError, match="must be 8 or 4"):
        ModelArgs(quantization_bit=3)
    _one_line_refusal(capsys, ["chat", "--model_name_or_path", str(tiny_dir), "--quantization_bit", "16",
                               "--query", "hi"], "--quantization_bit", "16")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    _one_line_refusal(capsys, ["chat", "--model_name_or_path", str(tiny_dir), "--quantization_bit", "8",
                               "--query", "hi"], "bitsandbytes", "softprompt[quantization]")
