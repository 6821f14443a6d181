"""p_tuning through the prefix-KV engine against PEFT's own P_TUNING model (fp32, GQA tiny model)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PromptEncoderConfig, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt.engine.forward import AdaptedLM
from softprompt.methods.p_tuning import PTuning
from tests.parity.test_prompt_tuning_parity import backward_both_and_compare_loss


@pytest.mark.parametrize("encoder_type,hidden", [("MLP", None), ("MLP", 24), ("LSTM", 16)])
def test_loss_and_grad_match_peft(tiny_dir, encoder_type, hidden):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_reparameterization_type=encoder_type,
                                 encoder_hidden_size=hidden)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    theirs = peft_model.prompt_encoder["default"]

    ours = PTuning(5, base.config.hidden_size, encoder_type, hidden)
    ours.load_state_dict(theirs.state_dict())  # same parameter names and shapes as PEFT's PromptEncoder
    model = AdaptedLM(base.requires_grad_(False), ours)

    backward_both_and_compare_loss(peft_model, model, base.config.vocab_size)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, their_params[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_saved_prompt_is_the_encoded_one(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    ours = PTuning(4, base.config.hidden_size)
    ours.load_state_dict(peft_model.prompt_encoder["default"].state_dict())
    torch.testing.assert_close(ours.adapter_state()["prompt_embeddings"],
                               peft_model.get_prompt_embedding_to_save("default"))
