"""The architecture matrix: every family of tests/families.py x every prompt method, fp32.

For each family and method: the training loss and the prompt's gradients equal PEFT's model (the
prompt concatenated to every row); greedy generation of rows of different lengths, left-padded in
one batch, equals the rows one at a time and a full recompute (no cache); the Predictor gives the
same; PEFT loads the adapter softprompt saved and generates the same; and the multi-task engine
serves the family's tasks in one mixed batch as it serves each alone. What cannot work is refused
in one line: the family at load, or the method when its adapter is created or loaded.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftModel, get_peft_model
from transformers import DynamicCache

from softprompt.config import ArgumentError, GenerateArgs, MethodArgs
from softprompt.checkpoint import CheckpointError
from softprompt.engine.forward import AdaptedLM, batch_loss, prefix_of
from softprompt.engine.generate import SamplingParams, generate
from softprompt.evaluate.verbalizer import score_labels
from softprompt.inference import Predictor
from softprompt.kv import roll_rows
from softprompt.methods import METHODS, of, read_adapter, save_adapter
from softprompt.model import LoadedModel, load_model
from softprompt.multitask import MultiTaskPredictor, Request
from softprompt.serve.batcher import Batcher
from softprompt.serve.scheduler import make_engine
from tests.e2e.test_bad_input import refused
from tests.families import FAMILIES, write_family
from tests.helpers import train_flags, write_alpaca_dataset
from tests.parity.test_prompt_tuning_parity import backward_both_and_compare_loss, right_padded_batch
from tests.tiny import build_tokenizer
from tests.unit.test_methods_checkpoint import _peft_greedy

PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")
L = 6
"""Virtual tokens: more than the windowed families' window of 5, so the window cuts into the prompt."""
NEW = 8
ARGS = {"prompt_tuning": {}, "p_tuning": {"encoder_hidden_size": 16}, "prefix_tuning": {}}
LOADED = [f for f, fam in FAMILIES.items() if "model" not in fam.refused]
CASES = [(f, m) for f in LOADED for m in PROMPT_METHODS if m not in FAMILIES[f].refused]
REFUSED = [(f, m) for f in LOADED for m in PROMPT_METHODS if m in FAMILIES[f].refused]
SLOTLESS = {"bloom"}
"""Families served batch by batch (:class:`Batcher`): ALiBi biases built from a 2-D mask, no 4-D mask taken."""
PEFT_DEFAULTS_DIFFER = {("falcon", "prefix_tuning"), ("opt", "prompt_tuning"), ("opt", "p_tuning")}
"""Where PEFT's own sizing of a new adapter does not fit the model (softprompt's saved config does): multi-query
Falcon keeps 1 K/V head, PEFT provisions 4; OPT-350m's embeddings are 32 wide, PEFT's prompt is hidden_size 48."""


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (9, 3, 12)]  # + L: all past the window


@dataclass
class Built:
    lm: LoadedModel
    folder: Path
    tasks: Path
    """One adapter folder per method that works on the family, named after it."""
    adapters: dict


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> its model folder (loaded through ``load_model``) and one saved adapter per working method."""
    tok, root, cache = build_tokenizer(), tmp_path_factory.mktemp("families"), {}

    def get(family: str) -> Built:
        if family not in cache:
            folder = write_family(family, root / family / "model", tok)
            lm = load_model(str(folder))
            adapters = {}
            for method in PROMPT_METHODS:
                if method in FAMILIES[family].refused:
                    continue
                args = MethodArgs(finetuning_type=method, num_virtual_tokens=L, **ARGS[method])
                adapters[method] = METHODS[method].create(lm.model, lm.tokenizer, args, torch.Generator().manual_seed(1))
                if method == "prompt_tuning":
                    with torch.no_grad():
                        adapters[method].embedding.weight.normal_(0, 1.0)  # a prompt strong enough to matter
                save_adapter(adapters[method], root / family / "tasks" / method, str(folder), lm.model)
            cache[family] = Built(lm, folder, root / family / "tasks", adapters)
        return cache[family]

    return get


def _peft_config(module, base):
    """PEFT's config for training the adapter softprompt made: the fields softprompt saves (the model's sizes)."""
    saved = module.adapter_config("base", base)
    fields = {k: v for k, v in saved.items() if k not in ("peft_type", "inference_mode")}
    return PEFT_TYPE_TO_CONFIG_MAPPING[saved["peft_type"]](**fields, inference_mode=False)


@pytest.mark.parametrize("family,method", CASES)
def test_loss_and_grads_match_peft(built, family, method):
    b = built(family)
    base, ours = copy.deepcopy(b.lm.model), copy.deepcopy(b.adapters[method]).requires_grad_(True)
    peft_model = get_peft_model(copy.deepcopy(base), _peft_config(ours, base))
    theirs = peft_model.prompt_encoder["default"]
    theirs.load_state_dict(ours.state_dict())  # PEFT's parameter names and shapes
    backward_both_and_compare_loss(peft_model, AdaptedLM(base, ours), base.get_input_embeddings().num_embeddings)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, their_params[name].grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("family,method", CASES)
def test_left_padded_rows_lose_the_same(built, family, method):
    """The loss of a batch does not depend on which side its padding is (the rows run next to the prefix)."""
    b = built(family)
    ids, mask, labels = right_padded_batch(b.lm.model.get_input_embeddings().num_embeddings, [9, 14, 5, 11], [3, 6, 1, 7])
    pad = mask.shape[1] - mask.sum(1)  # (B,)
    with torch.no_grad():
        prefix = prefix_of(b.lm.model, b.adapters[method])
        right = batch_loss(b.lm.model, ids, mask, labels, prefix)
        left = batch_loss(b.lm.model, *(roll_rows(t, pad, 1) for t in (ids, mask, labels)), prefix)
    torch.testing.assert_close(left[0], right[0], rtol=1e-5, atol=0)
    assert left[1] == right[1]


@pytest.mark.parametrize("family,method", CASES)
def test_peft_sizes_a_new_adapter_as_softprompt_does(built, family, method):
    b = built(family)
    config = PEFT_TYPE_TO_CONFIG_MAPPING[of(b.adapters[method]).peft_type](task_type="CAUSAL_LM", num_virtual_tokens=L)
    peft_model = get_peft_model(copy.deepcopy(b.lm.model), config)
    theirs = {k: getattr(peft_model.peft_config["default"], k) for k in ("token_dim", "num_attention_heads", "num_layers")}
    ours = {k: b.adapters[method].adapter_config("base", b.lm.model)[k] for k in theirs}
    assert (theirs == ours) != ((family, method) in PEFT_DEFAULTS_DIFFER), (theirs, ours)


def _full_recompute(base, module, ids: list[int], n: int) -> list[int]:
    """Greedy tokens with no cache carried over: each step runs the prompt (embeddings, or prefix tuning's K/V in
    the model's own cache class) and every token again."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            tokens = torch.tensor([seq])
            if of(module).kind == "prompt":
                embeds = torch.cat([module.prompt_embeds(), base.get_input_embeddings()(tokens[0])])[None]
                logits = base(inputs_embeds=embeds).logits
            else:
                kv, cache = module.prefix_kv(), DynamicCache(config=base.config)
                for layer, (k, v) in enumerate(zip(kv.keys, kv.values)):
                    cache.update(k, v, layer)
                mask = torch.ones(1, kv.length + len(seq), dtype=torch.long)
                logits = base(input_ids=tokens, attention_mask=mask, past_key_values=cache).logits
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@pytest.mark.parametrize("family,method", CASES)
def test_batched_generation_equals_one_at_a_time_and_full_recompute(built, family, method):
    b = built(family)
    base, module = b.lm.model, b.adapters[method]
    prompts = _prompts(base.get_input_embeddings().num_embeddings)
    with torch.no_grad():
        prefix = prefix_of(base, module).detach()
    params = SamplingParams(max_new_tokens=NEW)
    batched = generate(base, prompts, prefix, params=params)
    alone = [generate(base, [p], prefix, params=params)[0] for p in prompts]
    assert batched == alone
    assert alone == [_full_recompute(base, module, p, NEW) for p in prompts]

    predictor = Predictor(b.lm, str(b.tasks / method))
    gen = GenerateArgs(max_new_tokens=NEW)
    assert predictor.generate_ids(prompts, gen) == [predictor.generate_ids([p], gen)[0] for p in prompts]
    assert predictor.generate_ids(prompts, gen) == [_until_eos(x, b.lm.tokenizer.eos_token_id) for x in alone]


@pytest.mark.parametrize("family,method", CASES)
def test_peft_loads_ours_and_generates_the_same(built, family, method):
    b = built(family)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(b.lm.model), str(b.tasks / method)).eval()
    predictor = Predictor(b.lm, str(b.tasks / method))
    for p in _prompts(b.lm.model.get_input_embeddings().num_embeddings):
        ours = predictor.generate_ids([p], GenerateArgs(max_new_tokens=NEW))[0]
        assert ours == _peft_greedy(peft_model, b.lm.tokenizer, p, NEW)


@pytest.mark.parametrize("family", sorted({f for f, _ in CASES}, key=list(FAMILIES).index))
def test_mixed_task_batch_equals_each_alone(built, family):
    b = built(family)
    mt = MultiTaskPredictor(b.lm, prompts_dir=str(b.tasks))
    tasks = [*b.adapters, "base"]
    prompts = _prompts(b.lm.model.get_input_embeddings().num_embeddings)
    requests = [Request(task, p, SamplingParams(max_new_tokens=NEW)) for p in prompts for task in tasks]
    together = [r.token_ids for r in mt.run(requests)]
    assert together == [mt.run([r])[0].token_ids for r in requests]
    assert len({tuple(x) for x in together}) > len(prompts)  # the tasks really answer differently


@pytest.mark.parametrize("family", sorted({f for f, _ in CASES}, key=list(FAMILIES).index))
def test_the_server_engine_serves_mixed_tasks_as_the_plain_engine(built, family):
    """The continuous-batching scheduler (slot K/V cache, 4-D masks per layer kind, cached prefixes with the
    template's opening, prefill in chunks of 4) gives each request the plain engine's tokens, sliding windows
    included; a family its slot path does not fit is served by the batch-at-a-time Batcher instead."""
    b = built(family)
    mt = MultiTaskPredictor(b.lm, prompts_dir=str(b.tasks))
    engine = make_engine(mt, 4, 128, 64)
    if isinstance(engine, Batcher):
        assert family in SLOTLESS, f"{family}: the slot path was refused"
        return
    engine.prefill_chunk = 4
    vocab = b.lm.model.get_input_embeddings().num_embeddings
    prompts = _prompts(vocab) + [mt.chat_ids([{"role": "user", "content": t}]) for t in ("hello there", "why")]
    requests = [Request(task, p, SamplingParams(max_new_tokens=NEW)) for p in prompts for task in [*b.adapters, "base"]]
    engine.start()
    try:
        jobs = [engine.submit(r) for r in requests]
        served = [j.future.result(120).token_ids for j in jobs]
    finally:
        engine.stop()
    assert served == [mt.run([r])[0].token_ids for r in requests]
    assert engine.prefixes.stats["hits"] + engine.prefixes.stats["computed"] > 0


@pytest.mark.parametrize("family", sorted({f for f, _ in CASES}, key=list(FAMILIES).index))
def test_label_scores_in_a_batch_equal_each_alone(built, family):
    """eval's classification: label words of one and of three tokens scored after left-padded prompts."""
    b = built(family)
    base = b.lm.model
    with torch.no_grad():
        prefix = prefix_of(base, next(iter(b.adapters.values()))).detach()
    prompts, labels = _prompts(base.get_input_embeddings().num_embeddings), [[5], [7, 8, 9]]
    together = score_labels(base, prompts, labels, prefix)
    alone = torch.cat([score_labels(base, [p], labels, prefix) for p in prompts])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,method", REFUSED)
def test_method_refused_at_creation_and_load(built, family, method, tmp_path):
    b = built(family)
    why = FAMILIES[family].refused[method]
    args = MethodArgs(finetuning_type=method, num_virtual_tokens=L, **ARGS[method])
    with pytest.raises(ArgumentError, match=re.escape(why)) as error:
        METHODS[method].create(b.lm.model, b.lm.tokenizer, args, torch.Generator().manual_seed(1))
    assert "\n" not in str(error.value)
    # PEFT makes and saves one (its prefix skips the layers it does not fit); softprompt refuses to load it
    config = PEFT_TYPE_TO_CONFIG_MAPPING[METHODS[method].peft_type](task_type="CAUSAL_LM", num_virtual_tokens=L)
    get_peft_model(copy.deepcopy(b.lm.model), config).save_pretrained(tmp_path / "peft")
    with pytest.raises(CheckpointError, match=re.escape(why)):
        read_adapter(tmp_path / "peft").module(b.lm.model, str(b.folder))


@pytest.mark.parametrize("family", [f for f, fam in FAMILIES.items() if "model" in fam.refused])
def test_family_refused_at_load_in_one_line(family, tmp_path, capsys):
    folder = write_family(family, tmp_path / family)
    why = FAMILIES[family].refused["model"]
    with pytest.raises(ArgumentError, match=re.escape(why)):
        load_model(str(folder))
    data = write_alpaca_dataset(tmp_path / "data")
    refused(train_flags(folder, data, tmp_path / "out"), capsys, f"softprompt cannot run this {family} model", why,
            out=tmp_path / "out")
