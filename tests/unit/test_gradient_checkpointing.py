"""--gradient_checkpointing with every method, prefix tuning included (PEFT refuses that one): the
loss and the gradients equal those without it, and the layers really are recomputed."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.cli import main
from softprompt.config import MethodArgs
from softprompt.engine.forward import AdaptedLM, enable_gradient_checkpointing
from softprompt.methods import METHODS
from tests.helpers import train_flags, write_alpaca_dataset

ARGS = {
    "prompt_tuning": {"num_virtual_tokens": 4},
    "p_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4, "prefix_projection": True},
    "lora": {"lora_rank": 2},
    "freeze": {"freeze_trainable_layers": 1},
    "full": {},
}


def _loss_and_grads(tiny_dir, method: str, checkpointing: bool):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False)
    adapter = METHODS[method].create(base, AutoTokenizer.from_pretrained(tiny_dir),
                                     MethodArgs(finetuning_type=method, **ARGS[method]), torch.Generator().manual_seed(0))
    model = AdaptedLM(base, adapter)
    if checkpointing:
        enable_gradient_checkpointing(base)
    model.train()
    layer_calls = []
    base.get_decoder().layers[1].mlp.register_forward_pre_hook(lambda *_: layer_calls.append(1))
    ids = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    loss_sum, n = model(ids, mask, labels)
    calls_forward = len(layer_calls)
    loss_sum.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss_sum.detach(), grads, len(layer_calls) - calls_forward


@pytest.mark.parametrize("method", list(ARGS))
def test_checkpointing_gives_the_same_loss_and_gradients(tiny_dir, method):
    loss, grads, replays = _loss_and_grads(tiny_dir, method, checkpointing=False)
    loss_ckpt, grads_ckpt, replays_ckpt = _loss_and_grads(tiny_dir, method, checkpointing=True)
    assert replays == 0 and replays_ckpt == 1  # the row pass of the layer ran again in the backward
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7)


def test_cli_trains_prefix_tuning_with_checkpointing(tiny_dir, tmp_path):
    data = write_alpaca_dataset(tmp_path / "data")
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert main(train_flags(tiny_dir, data, plain, finetuning_type="prefix_tuning")) == 0
    assert main(train_flags(tiny_dir, data, ckpt, finetuning_type="prefix_tuning", gradient_checkpointing="true")) == 0
    assert (plain / "trainer_log.jsonl").read_text().splitlines()[-1].split('"learning_rate"')[0] == \
        (ckpt / "trainer_log.jsonl").read_text().splitlines()[-1].split('"learning_rate"')[0]
