#!/usr/bin/env python
"""Where a burst's time goes in the serving engine: prefill tokens (real vs padded), decode rows (run vs live).

The workload of ``serve_throughput.py`` (8 tasks of 20/100 virtual tokens, 64 chat requests arriving
together, 32 new tokens, greedy, the default model), through the :class:`Scheduler` alone, with its
runner's ``prefill_many`` and ``decode`` wrapped to count and time them. Point ``R`` at another checkout to
measure that tree's engine the same way (an A/B of two commits in two processes, run back to back):

    OMP_NUM_THREADS=2 python bench/serve_work.py [--rounds 2] [--max_num_batched_tokens 512]
    git worktree add /tmp/before <commit> && R=/tmp/before OMP_NUM_THREADS=2 python bench/serve_work.py

Prints one line per round: seconds, generated tokens, and the counts.
"""

import argparse
import collections
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("R", Path(__file__).resolve().parents[1]))
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT)]

import torch  # noqa: E402

import serve_throughput as st  # noqa: E402
from softprompt.engine.generate import SamplingParams  # noqa: E402
from softprompt.engine.slots import SlotRunner  # noqa: E402
from softprompt.model import load_model  # noqa: E402
from softprompt.multitask import MultiTaskPredictor, Request  # noqa: E402
from softprompt.serve.scheduler import Scheduler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max_num_batched_tokens", type=int, default=None, help="default: the engine's own")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    lm = load_model("smollm2-135m-instruct")
    folder = Path(tempfile.mkdtemp())
    names = st.make_tasks(lm, folder, [20, 100] * 4)
    mt = MultiTaskPredictor(lm, str(folder))
    # built here, not with serve_throughput.burst: with R=<an older checkout> its serve_throughput has no burst
    texts, _ = st.questions(64)
    reqs = [Request(names[i % 8], mt.chat_ids([{"role": "user", "content": texts[i]}]), SamplingParams(32))
            for i in range(64)]
    runner = SlotRunner(lm.model, 64, max(len(r.prompt_ids) for r in reqs) + 100 + 32)
    counts: collections.Counter = collections.Counter()
    prefill_many, decode = runner.prefill_many, runner.decode

    def counted_prefill(slots, chunks, starts):
        start = time.perf_counter()
        out = prefill_many(slots, chunks, starts)
        counts.update(prefill_s=time.perf_counter() - start, prefill_forwards=1, prefill_tokens=sum(map(len, chunks)),
                      prefill_padded=len(chunks) * max(map(len, chunks)))
        return out

    def counted_decode(tokens, positions, live):
        start = time.perf_counter()
        out = decode(tokens, positions, live)
        counts.update(decode_s=time.perf_counter() - start, decode_forwards=1, decode_rows=len(tokens),
                      decode_live=int(live.sum()))
        return out

    runner.prefill_many, runner.decode = counted_prefill, counted_decode
    kwargs = {"max_queue": 128}
    if args.max_num_batched_tokens and "prefill_chunk" in inspect.signature(Scheduler).parameters:
        kwargs["prefill_chunk"] = args.max_num_batched_tokens
    engine = Scheduler(mt, runner, **kwargs)
    engine.start()
    st.run_scheduler(engine, reqs[:8])  # warm-up: every task's prefix cached
    for rnd in range(args.rounds):
        counts.clear()
        r = st.run_scheduler(engine, reqs)
        shown = {k: round(v, 2) for k, v in sorted(counts.items())}
        print(f"{ROOT.name} round {rnd + 1}: {r['seconds']:.2f} s, {sum(map(len, r['outs']))} tokens, {shown}",
              flush=True)
    engine.stop()


if __name__ == "__main__":
    main()
