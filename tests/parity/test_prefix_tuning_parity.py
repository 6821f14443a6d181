"""prefix_tuning through the prefix-KV engine against PEFT's own PREFIX_TUNING model (fp32, GQA).

The tiny model has 4 heads and 2 K/V heads: PEFT provisions the prefix with the K/V heads, and
neither side applies RoPE to the prefix K/V.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt.engine.forward import AdaptedLM
from softprompt.methods.prefix_tuning import PrefixTuning, kv_shape
from tests.parity.test_prompt_tuning_parity import backward_both_and_compare_loss


def _pair(tiny_dir, num_virtual_tokens: int, projection: bool, hidden: int | None = None):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                                prefix_projection=projection, encoder_hidden_size=hidden)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    theirs = peft_model.prompt_encoder["default"]
    ours = PrefixTuning(num_virtual_tokens, *kv_shape(base), prefix_projection=projection, encoder_hidden_size=hidden)
    ours.load_state_dict(theirs.state_dict())  # same parameter names and shapes as PEFT's PrefixEncoder
    return base, peft_model, theirs, ours


@pytest.mark.parametrize("num_virtual_tokens,projection,hidden", [(1, False, None), (6, False, None), (6, True, 20)])
def test_loss_and_grad_match_peft(tiny_dir, num_virtual_tokens, projection, hidden):
    base, peft_model, theirs, ours = _pair(tiny_dir, num_virtual_tokens, projection, hidden)
    model = AdaptedLM(base.requires_grad_(False), ours)

    backward_both_and_compare_loss(peft_model, model, base.config.vocab_size)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, their_params[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_prefix_kv_is_peft_cache_layout(tiny_dir):
    base, peft_model, _, ours = _pair(tiny_dir, 3, False)
    cache = peft_model.get_prompt(batch_size=1)
    prefix = ours.prefix_kv()
    assert len(prefix.keys) == base.config.num_hidden_layers
    for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values)):
        assert k.shape == (1, base.config.num_key_value_heads, 3, base.config.hidden_size // base.config.num_attention_heads)
        torch.testing.assert_close(k, cache.layers[layer].keys, rtol=0, atol=0)
        torch.testing.assert_close(v, cache.layers[layer].values, rtol=0, atol=0)


def test_saved_prefix_is_the_projected_one(tiny_dir):
    _, peft_model, _, ours = _pair(tiny_dir, 4, True)
    torch.testing.assert_close(ours.adapter_state()["prompt_embeddings"],
                               peft_model.get_prompt_embedding_to_save("default"))
