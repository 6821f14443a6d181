"""softprompt's prefix-KV forward against PEFT's "concatenate the prompt to every row" (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt.engine.forward import AdaptedLM
from softprompt.methods.prompt_tuning import PromptTuning

IGNORE = -100


def right_padded_batch(vocab: int, lengths: list[int], prompt_lens: list[int], pad: int = 0):
    """A (B, T) batch of random ids, right-padded, labels only after each row's prompt part."""
    g = torch.Generator().manual_seed(1)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for i, (n, p) in enumerate(zip(lengths, prompt_lens)):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    return ids, mask, labels


def backward_both_and_compare_loss(peft_model, model, vocab: int) -> None:
    """One right-padded batch of varying lengths through PEFT's model and ours (both backward);
    the losses must agree within 1e-5 relative and count the same labelled tokens."""
    ids, mask, labels = right_padded_batch(vocab, [9, 14, 5, 11], [3, 6, 1, 7])
    peft_loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    peft_loss.backward()
    loss_sum, n = model(ids, mask, labels)
    (loss_sum / n).backward()
    assert n == int((labels[:, 1:] != IGNORE).sum())
    torch.testing.assert_close(loss_sum / n, peft_loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("num_virtual_tokens", [1, 7])
def test_loss_and_grad_match_peft(tiny_dir, num_virtual_tokens):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        copy.deepcopy(base), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    )
    peft_weight = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        peft_weight.normal_(0, 0.5)

    ours = PromptTuning(num_virtual_tokens, base.config.hidden_size)
    with torch.no_grad():
        ours.embedding.weight.copy_(peft_weight)
    model = AdaptedLM(base.requires_grad_(False), ours)

    backward_both_and_compare_loss(peft_model, model, base.config.vocab_size)
    torch.testing.assert_close(ours.embedding.weight.grad, peft_weight.grad, rtol=1e-4, atol=1e-7)
    assert ours.embedding.weight.grad.abs().sum() > 0
