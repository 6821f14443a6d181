"""Label scoring against a log-likelihood computed by hand from one plain forward per sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.kv import build_prefix
from softprompt.evaluate.verbalizer import (
    batch_calibrate, classify, common_prefix_length, label_token_ids, score_labels,
)
from softprompt.model import load_model

PROMPTS = [[5, 9, 33, 71, 8], [40, 41], [100, 7, 7, 12, 200, 3, 18, 19]]  # different lengths: left padding
LABELS = [[50], [60, 61, 62], [70, 71]]  # one, three and two tokens


def reference(model, prompt_embeds, prompt: list[int], label: list[int]) -> float:
    """sum_t log p(label_t | soft prompt, prompt, label_<t) from one unpadded forward over everything."""
    ids = torch.tensor(prompt + label)
    embeds = model.get_input_embeddings()(ids)  # (T, d)
    if prompt_embeds is not None:
        embeds = torch.cat([prompt_embeds, embeds])  # (L + T, d)
    logp = F.log_softmax(model(inputs_embeds=embeds[None]).logits[0].double(), -1)  # (L + T, V)
    start = len(embeds) - len(label)  # position of the first label token
    return sum(float(logp[start + i - 1, tok]) for i, tok in enumerate(label))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir)).model


@pytest.mark.parametrize("with_prompt", [False, True])
def test_scores_equal_hand_computed_log_likelihood(tiny, with_prompt):
    prompt_embeds = torch.randn(4, tiny.config.hidden_size) * 0.05 if with_prompt else None
    prefix = build_prefix(tiny, prompt_embeds) if with_prompt else None
    with torch.no_grad():
        got = score_labels(tiny, PROMPTS, LABELS, prefix)  # (3, 3)
        want = torch.tensor([[reference(tiny, prompt_embeds, p, lab) for lab in LABELS] for p in PROMPTS], dtype=torch.float64)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
    mean = score_labels(tiny, PROMPTS, LABELS, prefix, reduce="mean")
    torch.testing.assert_close(mean, got / torch.tensor([1.0, 3.0, 2.0]))


def test_classify_batches_do_not_change_scores(tiny):
    one = classify(tiny, PROMPTS, LABELS, None, 0, batch_size=1)
    big = classify(tiny, PROMPTS, LABELS, None, 0, batch_size=3)
    torch.testing.assert_close(one.scores, big.scores, atol=1e-5, rtol=0)
    assert one.predictions == big.scores.argmax(-1).tolist()


def test_batch_calibration_removes_a_constant_label_bias():
    # label 0 is favoured by +5 on every row: calibration recovers the order the rows had without it
    base = torch.tensor([[-1.0, -2.0], [-2.0, -1.0], [-1.5, -1.0], [-1.0, -1.2]])
    biased = base + torch.tensor([5.0, 0.0])
    assert biased.argmax(-1).tolist() == [0, 0, 0, 0]
    assert batch_calibrate(biased).argmax(-1).tolist() == batch_calibrate(base).argmax(-1).tolist() == [0, 1, 1, 0]


def test_label_words_tokenize(tiny_dir):
    tok = load_model(str(tiny_dir)).tokenizer
    ids = label_token_ids(tok, ["positive", "negative"])
    assert all(ids) and tok.decode(ids[0]) == "positive"


def test_shared_start_is_run_once_and_changes_nothing(tiny):
    start = [11, 12, 13, 14]
    prompts = [start + p for p in PROMPTS] + [start[:3] + [99]]
    assert common_prefix_length(prompts) == 3 and common_prefix_length([[1, 2], [1, 2]]) == 1
    prefix = build_prefix(tiny, torch.randn(4, tiny.config.hidden_size) * 0.05)
    with torch.no_grad():
        want = score_labels(tiny, prompts, LABELS, prefix)
    got = classify(tiny, prompts, LABELS, prefix, 0, batch_size=2).scores
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
