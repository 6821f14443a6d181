"""The continuous-batching scheduler on a real tiny model: a request's tokens are the same alone, in a crowd,
arriving while others run, or prefilled in chunks; the queue is bounded; a cancelled or failing request
leaves alone; the cached [soft prompt; template opening] prefix gives what the plain engine gives."""

from __future__ import annotations

import random
import shutil
import time

import pytest
import torch

from softprompt.checkpoint import write_adapter_files
from softprompt.engine.generate import SamplingParams
from softprompt.engine.sampling import filtered_probs
from softprompt.engine.slots import SlotRunner, grouped_attention, grouped_sdpa
from softprompt.methods.prompt_tuning import peft_prompt_config
from softprompt.model import load_model
from softprompt.multitask import MultiTaskPredictor, Request, TextStream
from softprompt.prompts import UnknownTaskError
from softprompt.serve.batcher import QueueFullError
from softprompt.serve.scheduler import Scheduler, plan_prefill


@pytest.fixture(scope="module")
def mt(tiny_dir, tmp_path_factory):
    lm = load_model(str(tiny_dir))
    root = tmp_path_factory.mktemp("tasks")
    d = lm.model.config.hidden_size
    for name, length, seed in (("a", 3, 1), ("b", 9, 2)):
        torch.manual_seed(seed)
        config = peft_prompt_config("PROMPT_TUNING", lm.name, lm.model, length, d)
        write_adapter_files(root / name, {"prompt_embeddings": torch.randn(length, d)}, config)
    return MultiTaskPredictor(lm, prompts_dir=str(root))


class Counts:
    """A metrics sink: what the scheduler reports per step."""

    def __init__(self):
        self.steps: list[tuple[int, int, int]] = []

    def step(self, batch_size: int, queue_depth: int, new_tokens: int) -> None:
        self.steps.append((batch_size, queue_depth, new_tokens))


def scheduler(mt, slots=4, max_queue=64, chunk=256, metrics=None) -> Scheduler:
    return Scheduler(mt, SlotRunner(mt.lm.model, slots, 256), max_queue, chunk, metrics)


def requests(mt, n=10, new=8, seed=0) -> list[Request]:
    rng = random.Random(seed)
    tasks = ["a", "b", "base"]
    out = []
    for i in range(n):
        words = " ".join(rng.choice(["red", "cat", "sky", "why", "sun", "dog"]) for _ in range(rng.randint(1, 12)))
        ids = mt.chat_ids([{"role": "user", "content": words}]) if i % 3 else mt.text_ids(words)
        out.append(Request(tasks[i % 3], ids, SamplingParams(max_new_tokens=new)))
    return out


def run_all(engine: Scheduler, reqs, gap_s: float = 0.0):
    jobs = []
    for r in reqs:
        jobs.append(engine.submit(r))
        time.sleep(gap_s)
    return [j.future.result(60) for j in jobs]


def test_crowd_staggered_and_chunked_equal_alone_and_the_plain_engine(mt):
    reqs = requests(mt)
    reference = [mt.run([r])[0].token_ids for r in reqs]  # engine/generate.py, one at a time
    for slots, chunk, gap in ((1, 256, 0.0), (4, 256, 0.0), (4, 256, 0.003), (8, 5, 0.001)):
        engine = scheduler(mt, slots, chunk=chunk)
        engine.start()
        try:
            got = [r.token_ids for r in run_all(engine, reqs, gap)]
        finally:
            engine.stop()
        assert got == reference, (slots, chunk, gap)
    assert len({tuple(x) for x in reference}) > 5  # the tasks and prompts really answer differently
    assert engine.prefixes.stats["hits"] > 0  # chat prompts started from the cached [soft prompt; opening]


def test_several_requests_prefilled_in_one_forward_equal_one_at_a_time(mt):
    """Chunks of several slots in one right-padded forward: the same K/V and logits as each chunk alone, and,
    through the scheduler with a budget that splits prompts unevenly, the plain engine's tokens."""
    prompts = [mt.text_ids("red cat sky why sun dog red cat sky"), mt.text_ids("dog"), mt.text_ids("why sun dog red")]
    prompts = [p * 3 for p in prompts]
    together, alone = SlotRunner(mt.lm.model, 4, 64), SlotRunner(mt.lm.model, 4, 64)
    slots, done = [3, 0, 2], [0, 0, 0]  # not contiguous: the rows are gathered
    for cut in (5, 2, 9):  # uneven chunks: each round every prompt takes up to `cut` more tokens
        rows = [i for i in range(3) if done[i] < len(prompts[i])]
        chunks = [prompts[i][done[i]:done[i] + cut] for i in rows]
        got = together.prefill_many([slots[i] for i in rows], chunks, [done[i] for i in rows])  # (B, V)
        want = torch.stack([alone.prefill(slots[i], c, done[i]) for i, c in zip(rows, chunks)])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got.argmax(-1) == want.argmax(-1)).all()
        done = [d + len(c) for d, c in zip(done, [prompts[i][done[i]:done[i] + cut] for i in range(3)])]
    for layer in range(len(together.pool.keys)):
        for i, s in enumerate(slots):  # every real column the same (the scratch slot took the padding)
            torch.testing.assert_close(together.pool.keys[layer][s, :, :done[i]], alone.pool.keys[layer][s, :, :done[i]])

    reqs = requests(mt, 9, seed=5)
    reference = [mt.run([r])[0].token_ids for r in reqs]
    sizes = {}
    for chunk in (7, 13, 48):  # small budgets cut prompts into pieces; a larger one lets several share a step
        engine = scheduler(mt, 6, chunk=chunk)
        prefill_many = engine.runner.prefill_many
        engine.runner.prefill_many = lambda s, c, p, k=chunk, f=prefill_many: sizes.setdefault(k, []).append(
            len(s)) or f(s, c, p)
        engine.start()
        try:
            got = [r.token_ids for r in run_all(engine, reqs)]
        finally:
            engine.stop()
        assert got == reference, chunk
    assert max(sizes[48]) > 1  # several requests really shared a forward


@pytest.mark.parametrize("seed", range(20))
def test_a_prefill_step_fits_the_budget_with_little_padding(seed):
    rng = random.Random(seed)
    todo = [rng.choice([rng.randint(1, 12), rng.randint(20, 70), rng.randint(200, 900)]) for _ in range(30)]
    budget = rng.choice([64, 256, 512])
    chosen, width = plan_prefill(todo, budget)
    chunks = [min(todo[i], width) for i in chosen]
    assert chosen[0] == 0 and chosen == sorted(set(chosen))  # the oldest always runs; each row once
    assert width == max(min(todo[i], budget) for i in chosen) and max(chunks) == width
    assert len(chosen) * width <= budget  # a single row is cut to the budget
    assert len(chosen) * width - sum(chunks) <= 0.25 * len(chosen) * width  # padding at most a quarter
    assert len(chosen) > 1 or sum(1 for t in todo if 0.75 * width <= min(t, budget) <= width) == 1 or \
        2 * width > budget  # when nothing else joined, nothing else could have


def test_grouped_attention_equals_transformers_sdpa(mt, monkeypatch):
    """Query heads stacked on their K/V head give SDPA's own numbers, for one and several query tokens, and the
    runner's forwards really take that path only while they run."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attn(torch.nn.Module):
        num_key_value_groups = 3

    torch.manual_seed(0)
    for length in (1, 5):
        q, k, v = torch.randn(4, 6, length, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
        mask = torch.zeros(4, 1, length, 11).masked_fill(torch.rand(4, 1, length, 11) < 0.3, -1e30)
        mask[..., 0] = 0
        want, _ = sdpa_attention_forward(Attn(), q, k, v, mask, scaling=0.3)
        got, _ = grouped_sdpa(Attn(), q, k, v, mask, scaling=0.3)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from softprompt.engine.slots import GROUPED_SDPA

    calls = []
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, GROUPED_SDPA,
                        lambda m, q, *a, **kw: calls.append(q.shape[2]) or grouped_sdpa(m, q, *a, **kw))
    config = mt.lm.model.config
    assert config._attn_implementation == "sdpa"
    with grouped_attention(mt.lm.model):
        assert config._attn_implementation == GROUPED_SDPA
    assert config._attn_implementation == "sdpa"
    runner = SlotRunner(mt.lm.model, 2, 32)
    runner.prefill(0, [5, 6, 7, 8], 0)
    assert calls and set(calls) == {4} and config._attn_implementation == "sdpa"


def test_finished_rows_move_down_so_a_decode_step_runs_no_dead_rows(mt):
    """Rows that end at different steps free slots in the middle; the rows above move down, the decode step
    covers only running rows, and every request's tokens are still the plain engine's."""
    reqs = requests(mt, 12, seed=7)
    for i, r in enumerate(reqs):
        r.params = SamplingParams(max_new_tokens=2 + (7 * i) % 11)
    reference = [mt.run([r])[0].token_ids for r in reqs]
    engine = scheduler(mt, 6)
    seen, decode = [], engine.runner.decode
    engine.runner.decode = lambda t, p, live: seen.append((len(t), engine.running(), sorted(engine._rows))) or \
        decode(t, p, live)
    engine.start()
    try:
        got = [r.token_ids for r in run_all(engine, reqs)]
    finally:
        engine.stop()
    assert got == reference
    assert all(slots == list(range(running)) and n <= running for n, running, slots in seen)
    assert len({running for _, running, _ in seen}) > 3  # rows really left at different steps


def test_seeded_sampling_is_the_same_alone_or_in_a_crowd(mt):
    reqs = requests(mt, 6, new=10, seed=3)
    for i, r in enumerate(reqs):
        r.params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=50 * (i % 2), seed=i)
    engine = scheduler(mt, 4)
    engine.start()
    try:
        alone = [run_all(engine, [r])[0].token_ids for r in reqs]
        crowd = [r.token_ids for r in run_all(engine, reqs)]
    finally:
        engine.stop()
    assert crowd == alone and len({tuple(x) for x in alone}) == len(alone)


def test_filtered_probs_keep_top_k_and_top_p():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    probs, order = filtered_probs(logits, torch.tensor([1.0, 1.0]), torch.tensor([2, 0]), torch.tensor([1.0, 0.5]))
    assert (probs[0, 2:] == 0).all() and (probs[0, :2] > 0).all()  # top-k 2
    assert order[1, 0] == 3 and probs[1, 0] == 1.0  # the top token alone crosses 0.5


def test_full_queue_is_refused_and_more_requests_than_slots_wait(mt):
    engine = scheduler(mt, 2, max_queue=3, metrics=Counts())
    reqs = requests(mt, 3)
    jobs = [engine.submit(r) for r in reqs]
    assert engine.full() and engine.queue_depth() == 3
    with pytest.raises(QueueFullError, match="3 requests are waiting"):
        engine.submit(reqs[0])
    engine.start()
    try:
        assert all(j.future.result(60).completion_tokens > 0 for j in jobs)
    finally:
        engine.stop()
    steps = engine.metrics.steps
    assert max(b for b, _, _ in steps) == 2 and steps[0][1] == 1  # two slots; the third waited
    assert sum(n for _, _, n in steps) == sum(j.future.result().completion_tokens for j in jobs)
    assert engine.running() == 0 and engine.queue_depth() == 0


def test_cancelled_and_failing_requests_leave_alone(mt, tmp_path):
    shutil.copytree(mt.registry.folder("a"), tmp_path / "gone")
    mt.registry.register("gone", tmp_path / "gone")
    long = Request("a", mt.text_ids("red cat"), SamplingParams(max_new_tokens=200))
    doomed = Request("gone", mt.text_ids("sky"), SamplingParams(max_new_tokens=4))
    engine = scheduler(mt, 4)
    engine.check(doomed)
    mt.registry._registered.pop("gone")  # the task disappears between the check and the run
    others = requests(mt, 4)
    cancelled = engine.submit(long)
    jobs = [engine.submit(r) for r in [doomed, *others]]
    engine.start()
    try:
        with pytest.raises(UnknownTaskError):
            jobs[0].future.result(60)
        time.sleep(0.2)
        cancelled.cancelled = True
        assert len(cancelled.future.result(60).token_ids) < 200
        assert [j.future.result(60).token_ids for j in jobs[1:]] == [mt.run([r])[0].token_ids for r in others]
    finally:
        engine.stop()
    assert engine.running() == 0


def test_a_request_over_max_model_len_is_refused_before_queueing(mt):
    engine = Scheduler(mt, SlotRunner(mt.lm.model, 2, 32))
    from softprompt.multitask import ContextLengthError

    with pytest.raises(ContextLengthError, match="--max_model_len 32"):
        engine.check(Request("b", list(range(5, 25)), SamplingParams(max_new_tokens=8)))


@pytest.mark.parametrize("seed", range(3))
def test_text_stream_equals_full_decode_and_never_streams_a_stop_string(mt, seed):
    tok = mt.lm.tokenizer
    rng = random.Random(seed)
    text = "".join(rng.choice(["héllo ", "wörld ", "日本 ", "END", "x", "\n", "🙂 "]) for _ in range(40))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    stream = TextStream(tok, [], pieces.append)
    for i in ids:
        stream.push(i)
    stream.flush()
    assert "".join(pieces) == stream.text == tok.decode(ids, skip_special_tokens=True)
    pieces.clear()
    stream = TextStream(tok, ["END"], pieces.append)
    stopped = False
    for i in ids:
        if stream.push(i):
            stopped = True
            break
    stream.flush()
    full = tok.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == stream.text == full.split("END")[0] and stopped == ("END" in full)


@pytest.mark.parametrize("kwargs,message", [({"max_num_seqs": 0}, "--max_num_seqs must be at least 1"),
                                            ({"max_model_len": 1}, "--max_model_len must be at least 2"),
                                            ({"max_num_batched_tokens": 0}, "--max_num_batched_tokens must be in"),
                                            ({"compile": True}, "--compile needs a CUDA GPU")])
def test_serve_flags_are_checked_in_one_line(kwargs, message):
    from softprompt.command_args import ServeArgs
    from softprompt.config import ArgumentError

    if kwargs.get("compile") and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --compile is allowed")
    with pytest.raises(ArgumentError, match=message):
        ServeArgs(**kwargs)
    assert ServeArgs(max_batch_size=3).max_num_seqs == 3 and ServeArgs(max_num_seqs=5).max_num_seqs == 5


def test_the_old_batch_window_flag_warns_that_it_is_ignored(caplog):
    """--batch_window_ms still parses (old command lines) but says in one line that it changes nothing."""
    from softprompt.cli import main

    with caplog.at_level("WARNING", logger="softprompt"):  # the adapter refusal ends it before any model load
        assert main(["serve", "--batch_window_ms", "5", "--adapter_name_or_path", "x"]) == 2
    assert "--batch_window_ms is ignored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="softprompt"):
        assert main(["serve", "--adapter_name_or_path", "x"]) == 2
    assert "batch_window_ms" not in caplog.text
