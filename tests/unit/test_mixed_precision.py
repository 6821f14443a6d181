"""bf16 autocast (what --bf16 gives on a CPU): the base computes in bf16, the soft prompt stays fp32.

The prompt is the master copy: its gradient and its AdamW update are fp32, so an update far below
bf16's resolution still moves it.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from softprompt.engine.forward import AdaptedLM, prefix_of
from softprompt.methods.prompt_tuning import PromptTuning


def test_bf16_autocast_keeps_the_prompt_and_its_updates_fp32(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False)
    prompt = PromptTuning(4, base.config.hidden_size)
    with torch.no_grad():
        prompt.embedding.weight.normal_(0, 1.0)
    model = AdaptedLM(base, prompt)
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    mask, labels = torch.ones_like(ids), ids.clone()

    with torch.autocast("cpu", dtype=torch.bfloat16):  # accelerator.autocast() on a CPU with --bf16
        v = prefix_of(base, prompt).values[0]
        assert torch.equal(v, v.bfloat16().to(v.dtype))  # the projections ran in bf16
        loss_sum, n = model(ids, mask, labels)
    (loss_sum / n).backward()
    w = prompt.embedding.weight
    assert w.dtype == torch.float32 and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()

    before = w.detach().clone()
    torch.optim.AdamW([w], lr=1e-4, weight_decay=0.0).step()  # Adam's first step: every entry moves ~1e-4
    moved = w.detach() != before
    assert moved.float().mean() > 0.95  # the fp32 master copy keeps the small update...
    lost = w.detach().bfloat16() == before.bfloat16()
    assert lost.float().mean() > 0.9  # ...that a bf16 prompt would have rounded away
