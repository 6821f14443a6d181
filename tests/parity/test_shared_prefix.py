"""The batch's common token prefix run once (``AdaptedLM(shared_prefix=True)``) against the rows run whole
(``shared_prefix=False``) and against PEFT's own model, fp32: loss and gradients (soft prompt, p-tuning
encoder, prefix-tuning K/V, LoRA weights, full fine-tuning) equal to 1e-5 relative.

Batches: rows sharing their first tokens, mixed lengths and right padding; rows sharing nothing; a common
prefix that runs into a labelled position (it must stop before the column that predicts it); a common
prefix longer than the shortest row. Families with sliding windows shorter than the shared part.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.engine.forward import AdaptedLM, enable_gradient_checkpointing, shared_length
from softprompt.config import MethodArgs
from softprompt.methods import METHODS
from softprompt.methods.lora import Lora
from softprompt.methods.p_tuning import PTuning
from softprompt.methods.prefix_tuning import PrefixTuning, kv_shape
from softprompt.methods.prompt_tuning import PromptTuning
from tests.families import FAMILIES, build_family

IGNORE = -100

# name -> (common tokens, row lengths, where each row's labels start, the shared length the engine must pick)
BATCHES = {
    "common_prefix": (8, [14, 19, 10, 16], [10, 12, 9, 11], 8),
    "prefix_reaches_a_label": (12, [15, 18, 14, 16], [6, 13, 12, 14], 5),  # column 5 predicts row 0's first label
    "longer_than_a_row": (9, [7, 12, 10], [7, 10, 9], 6),  # row 0 (7 tokens, no label) keeps its last one
    "nothing_shared": (0, [9, 14, 5, 11], [3, 6, 1, 7], 0),
    "near_labels": (6, [12, 15, 9, 13], [7, 8, 7, 9], 6),  # labels close enough to the prompt for a window of 5
}


def shared_batch(vocab: int, common: int, lengths: list[int], label_from: list[int], seed: int = 1):
    """(B, T) right-padded ids, mask and labels: every row starts with the same ``common`` random tokens
    (as far as it is long), then its own; labels from ``label_from[i]`` to the row's end."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(3, vocab, (common,), generator=g)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE)
    for i, (n, p) in enumerate(zip(lengths, label_from)):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        ids[i, :min(common, n)] = start[:n]
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    return ids, mask, labels


def loss_and_grads(run, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``run()`` -> mean loss; backward; the loss and a copy of each parameter's gradient (cleared after)."""
    for p in params.values():
        p.grad = None
    loss = run()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in params.items()}
    for p in params.values():
        p.grad = None
    return loss.detach(), grads


def assert_same(ours: tuple, ref: tuple, what: str, rtol: float = 1e-5) -> None:
    """Loss to ``rtol`` relative; each gradient to ``rtol`` relative in norm (and not zero)."""
    torch.testing.assert_close(ours[0], ref[0], rtol=rtol, atol=0, msg=f"{what}: loss")
    for name, g in ref[1].items():
        assert g.norm() > 0, f"{what}: {name} has no gradient"
        rel = float((ours[1][name] - g).norm() / g.norm())
        assert rel <= rtol, f"{what}: gradient of {name} differs by {rel:.2e} relative"


def check_three_ways(base, adapter, params: dict, peft_model, batch: str) -> None:
    """Shared prefix on == off == PEFT's model on the batch ``batch``; the engine picks the expected length."""
    common, lengths, label_from, expected = BATCHES[batch]
    ids, mask, labels = shared_batch(base.get_input_embeddings().num_embeddings, common, lengths, label_from)
    assert shared_length(ids, mask, labels) == expected
    results = {}
    for on in (True, False):
        model = AdaptedLM(base, adapter, shared_prefix=on).train()
        results[on] = loss_and_grads(lambda: (lambda s, n: s / n)(*model(ids, mask, labels)), params)
    peft = loss_and_grads(lambda: peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                          peft_params(peft_model, params))
    assert_same(results[True], results[False], f"{batch}: shared prefix vs rows")
    assert_same(results[True], peft, f"{batch}: shared prefix vs PEFT")


def peft_params(peft_model, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's parameters under our names: the prompt encoder's (prompt methods), or the very same tensors."""
    encoder = getattr(peft_model, "prompt_encoder", None)
    if encoder is None or "default" not in encoder:
        return ours
    theirs = dict(encoder["default"].named_parameters())
    return {name: theirs[name] for name in ours}


def _base(tiny_dir, family: str | None):
    if family is None:
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).requires_grad_(False)
    return build_family(family, 300).requires_grad_(False)


def prompt_pair(base, method: str):
    """(our adapter, PEFT's model with the same parameters) for a prompt method."""
    d = base.config.hidden_size
    if method == "prompt_tuning":
        ours, config = PromptTuning(5, d), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
        with torch.no_grad():
            ours.embedding.weight.normal_(0, 0.5)
    elif method == "p_tuning":
        ours, config = PTuning(5, d, "MLP", 24), PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_reparameterization_type="MLP",
            encoder_hidden_size=24)
    else:
        ours = PrefixTuning(4, *kv_shape(base), prefix_projection=True, encoder_hidden_size=20)
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True,
                                    encoder_hidden_size=20)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    peft_model.prompt_encoder["default"].load_state_dict(ours.state_dict())
    return ours, peft_model


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_prompt_methods(tiny_dir, method, batch):
    base = _base(tiny_dir, None)
    ours, peft_model = prompt_pair(base, method)
    check_three_ways(base, ours, dict(ours.named_parameters()), peft_model, batch)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma3"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_sliding_window_families(tiny_dir, family, method):
    """A window of 5 columns, shorter than the shared 6 tokens and the prompt: the rows' suffixes still see
    exactly the columns they would see whole (labels near enough for the prompt to reach them in 2 layers)."""
    base = _base(tiny_dir, family)
    ours, peft_model = prompt_pair(base, method)
    check_three_ways(base, ours, dict(ours.named_parameters()), peft_model, "near_labels")


@pytest.mark.parametrize("batch", ["common_prefix", "prefix_reaches_a_label"])
def test_lora(tiny_dir, batch):
    """LoRA's shared prefix runs with the adapted weights; PEFT's LoRA model is the same modules."""
    base = _base(tiny_dir, None)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))  # B != 0: the adapter changes the model
    params = {n: p for n, p in base.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in params)
    check_three_ways(base, Lora(peft_model), params, peft_model, batch)


def test_full_fine_tuning(tiny_dir):
    """Every weight trains (embeddings included: the shared tokens' embeddings get their gradient once)."""
    base = _base(tiny_dir, None)
    adapter = METHODS["full"].create(base, AutoTokenizer.from_pretrained(tiny_dir), MethodArgs(finetuning_type="full"),
                                     torch.Generator().manual_seed(0))
    params = {n: p for n, p in base.named_parameters() if p.requires_grad}
    check_three_ways(base, adapter, params, base, "common_prefix")


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_gradient_checkpointing(tiny_dir, method):
    """The suffix pass checkpointed, the shared pass not: the same loss and gradients as without checkpointing."""
    base = _base(tiny_dir, None)
    ours, _ = prompt_pair(base, method)
    ids, mask, labels = shared_batch(300, *BATCHES["common_prefix"][:3])
    params = dict(ours.named_parameters())
    model = AdaptedLM(base, ours).train()
    plain = loss_and_grads(lambda: (lambda s, n: s / n)(*model(ids, mask, labels)), params)
    enable_gradient_checkpointing(base)
    checkpointed = loss_and_grads(lambda: (lambda s, n: s / n)(*model(ids, mask, labels)), params)
    assert_same(checkpointed, plain, "checkpointed vs plain")


def test_bf16_autocast(tiny_dir):
    """Under bf16 autocast the shared pass runs too and lands near the row-by-row bf16 result."""
    base = _base(tiny_dir, None)
    ours, _ = prompt_pair(base, "prompt_tuning")
    ids, mask, labels = shared_batch(300, *BATCHES["common_prefix"][:3])
    params = dict(ours.named_parameters())
    out = {}
    for on in (True, False):
        model = AdaptedLM(base, ours, shared_prefix=on).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[on] = loss_and_grads(lambda: (lambda s, n: s / n)(*model(ids, mask, labels)), params)
    assert out[True][1]["embedding.weight"].dtype == torch.float32
    assert_same(out[True], out[False], "bf16: shared vs rows", rtol=3e-2)


def test_dropout_turns_the_shared_pass_off(tiny_dir):
    """With LoRA dropout each row draws its own masks: training falls back to the whole rows."""
    base = _base(tiny_dir, None)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj"]))
    model = AdaptedLM(base, Lora(peft_model)).train()
    calls = []
    base.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    model(*shared_batch(300, *BATCHES["common_prefix"][:3]))
    assert len(calls) == 1  # one pass: the rows, whole
    model.eval()
    with torch.no_grad():
        model(*shared_batch(300, *BATCHES["common_prefix"][:3]))
    assert len(calls) == 3  # no dropout in eval mode: the shared pass, then the suffixes


FAMILY_CASES = [(f, m) for f, fam in FAMILIES.items() if "model" not in fam.refused
                for m in ("prompt_tuning", "p_tuning", "prefix_tuning") if m not in fam.refused]


@pytest.mark.parametrize("family,method", FAMILY_CASES)
def test_every_family_shared_equals_rows(family, method):
    """Every architecture family the engine runs (learned positions, ALiBi, soft-capping, narrow embeddings,
    per-layer head sizes...): the shared pass gives the row-by-row loss and gradients. In eval mode: GPT-2 and
    OPT drop out in training (there the shared pass turns itself off), and gradients flow all the same."""
    base = build_family(family, 300).requires_grad_(False)
    width = base.get_input_embeddings().embedding_dim
    torch.manual_seed(0)
    ours = {"prompt_tuning": lambda: PromptTuning(5, width), "p_tuning": lambda: PTuning(5, width, "MLP", 24),
            "prefix_tuning": lambda: PrefixTuning(4, *kv_shape(base), prefix_projection=True,
                                                  encoder_hidden_size=20)}[method]()
    if method == "prompt_tuning":
        with torch.no_grad():
            ours.embedding.weight.normal_(0, 1.0)
    ids, mask, labels = shared_batch(300, *BATCHES["near_labels"][:3])
    params = dict(ours.named_parameters())
    out = {on: loss_and_grads(lambda: (lambda s, n: s / n)(*AdaptedLM(base, ours, shared_prefix=on).eval()(
        ids, mask, labels)), params) for on in (True, False)}
    assert_same(out[True], out[False], f"{family} {method}")


def test_a_prompt_encoder_dropout_keeps_the_shared_pass(tiny_dir):
    """p-tuning's encoder dropout runs once per batch, shared pass or not: only the base's dropout turns it off."""
    base = _base(tiny_dir, None)
    model = AdaptedLM(base, PTuning(5, base.config.hidden_size, "MLP", 24, dropout=0.3)).train()
    calls = []
    base.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    model(*shared_batch(300, *BATCHES["common_prefix"][:3]))
    assert len(calls) == 2  # the prompt with the shared tokens, then the suffixes
