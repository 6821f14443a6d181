"""Engine invariants: padding never moves positions; accumulation equals one big batch."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from softprompt.data import collate
from softprompt.engine.forward import AdaptedLM, decoder_hidden, labelled_loss, positions_after, prefix_of
from softprompt.engine.generate import SamplingParams, generate, pick_next
from softprompt.methods.prompt_tuning import PromptTuning


def _model_and_prompt(tiny_dir, L=5):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False)
    prompt = PromptTuning(L, base.config.hidden_size)
    with torch.no_grad():
        prompt.embedding.weight.normal_(0, 1.0)
    return base, prompt


def test_positions_ignore_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    pos = positions_after(mask, 7)
    assert pos[0, 2:].tolist() == [7, 8, 9] and pos[1, :3].tolist() == [7, 8, 9]


def test_batched_generation_equals_one_at_a_time(tiny_dir):
    base, prompt = _model_and_prompt(tiny_dir)
    prefix = prefix_of(base, prompt).detach()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 11, 6, 1)]
    ten = SamplingParams(max_new_tokens=10)
    batched = generate(base, prompts, prefix, params=ten, eos_token_ids=[2], pad_token_id=0)
    single = [generate(base, [p], prefix, params=ten, eos_token_ids=[2], pad_token_id=0)[0] for p in prompts]
    assert batched == single
    assert sum(map(len, single)) > 0


def test_generation_with_prefix_matches_full_recompute(tiny_dir):
    """Greedy tokens with cached prefix == argmax of a full forward over [prompt embeds; tokens]."""
    base, prompt = _model_and_prompt(tiny_dir)
    ids = [5, 9, 33, 120]
    out = generate(base, [ids], prefix_of(base, prompt).detach(), params=SamplingParams(max_new_tokens=5),
                   eos_token_ids=[])
    seq = list(ids)
    with torch.no_grad():
        for _ in range(5):
            embeds = torch.cat([prompt.embedding.weight, base.get_input_embeddings()(torch.tensor(seq))])[None]
            seq.append(int(base(inputs_embeds=embeds).logits[0, -1].argmax()))
    assert out[0] == seq[len(ids):]


def test_accumulation_equals_one_big_batch(tiny_dir):
    """batch 8 x accumulation 1 == batch 1 x accumulation 8 (loss normalised by the window's tokens)."""
    base, prompt = _model_and_prompt(tiny_dir)
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (4, 9, 6, 12, 3, 8, 10, 5):
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    model = AdaptedLM(base, prompt)

    big = collate(rows, 0)
    loss_sum, n = model(big["input_ids"], big["attention_mask"], big["labels"])
    (loss_sum / n).backward()
    grad_big = prompt.embedding.weight.grad.clone()
    prompt.embedding.weight.grad = None

    total = sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)
    for r in rows:
        b = collate([r], 0)
        loss_sum, _ = model(b["input_ids"], b["attention_mask"], b["labels"])
        (loss_sum / total).backward()
    torch.testing.assert_close(prompt.embedding.weight.grad, grad_big, rtol=1e-4, atol=1e-7)


def test_loss_only_at_labelled_positions(tiny_dir):
    base, _ = _model_and_prompt(tiny_dir)
    ids = torch.randint(3, 300, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        hidden = decoder_hidden(base, ids, torch.ones_like(ids))
        loss_sum, n = labelled_loss(base, hidden, labels)
        reference = base(input_ids=ids, labels=labels).loss
    assert n == 2 * 3
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=0)


def test_sampling_respects_top_k_and_is_seeded():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    picks = {int(pick_next(logits, 1.0, 1.0, 2, torch.Generator().manual_seed(s))) for s in range(40)}
    assert picks <= {1, 2} and len(picks) == 2
    a = pick_next(logits.repeat(5, 1), 1.0, 0.9, 0, torch.Generator().manual_seed(7))
    b = pick_next(logits.repeat(5, 1), 1.0, 0.9, 0, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert int(pick_next(logits, 0.0, 1.0, 0, None)) == 1


def test_mixed_task_batch_equals_each_request_alone(tiny_dir):
    """Rows of different tasks (prefix lengths 3 and 8, and the bare base) in one batch."""
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False)
    tasks = {}
    for name, L, seed in (("a", 3, 1), ("b", 8, 2)):
        torch.manual_seed(seed)
        p = PromptTuning(L, base.config.hidden_size)
        with torch.no_grad():
            p.embedding.weight.normal_(0, 1.0)
        tasks[name] = prefix_of(base, p).detach()
    tasks["base"] = None
    g = torch.Generator().manual_seed(5)
    order = ["a", "b", "base", "b", "a", "base", "b"]
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 9, 2, 6, 12, 7, 1)]
    eight = SamplingParams(max_new_tokens=8)
    mixed = generate(base, prompts, [tasks[t] for t in order], params=eight, eos_token_ids=[2])
    alone = [generate(base, [p], tasks[t], params=eight, eos_token_ids=[2])[0] for p, t in zip(prompts, order)]
    assert mixed == alone
    assert len({tuple(x) for x in alone}) > 3  # the tasks really answer differently


def test_per_row_sampling_params_and_stop_callback(tiny_dir):
    from softprompt.engine.generate import SamplingParams

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False)
    prompts = [[5, 6, 7], [8, 9], [10]]
    params = [SamplingParams(max_new_tokens=2), SamplingParams(max_new_tokens=5, temperature=1.0, seed=3),
              SamplingParams(max_new_tokens=4)]
    out = generate(base, prompts, None, params=params, eos_token_ids=[])
    assert [len(x) for x in out] == [2, 5, 4]
    again = generate(base, [prompts[1]], None, params=[params[1]], eos_token_ids=[])
    assert again[0] == out[1]  # a row's seed makes its sampling reproducible, whatever the batch
    stopped = generate(base, prompts, None, params=SamplingParams(max_new_tokens=6), eos_token_ids=[],
                       on_token=lambda row, tok: row == 0)
    assert len(stopped[0]) == 1 and len(stopped[1]) == 6
