#!/usr/bin/env python
"""The scheduler's prefill paths A/B under the same load: one request's chunk per forward (the loop before
batched prefill) vs several requests' chunks in one forward (``Scheduler._prefill`` now).

Same workload as ``serve_throughput.py`` (8 tasks of 20/100 virtual tokens, 64 chat requests arriving
together, 32 new tokens, greedy, 64 slots), both engines in one process over the same model, bursts
alternated; prints seconds (wall and this process's CPU) and TTFT p50 per burst, the median speedups, and whether the tokens are the same.
Nothing is written. On a shared machine this is the comparison to trust (both paths see the same load).

    OMP_NUM_THREADS=2 python bench/serve_prefill_ab.py --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_throughput as st  # noqa: E402

from softprompt.engine.slots import SlotRunner  # noqa: E402
from softprompt.model import load_model  # noqa: E402
from softprompt.multitask import MultiTaskPredictor  # noqa: E402
from softprompt.serve.scheduler import Scheduler  # noqa: E402


class OneAtATime(Scheduler):
    """The scheduler with the earlier prefill: one forward per request's chunk."""

    def _prefill(self) -> None:
        budget = self.prefill_chunk
        for row in [r for r in self._rows.values() if r.todo]:
            if budget <= 0:
                return
            chunk, row.todo = row.todo[:budget], row.todo[budget:]
            logits = self.runner.prefill(row.slot, chunk, row.length)  # (V,)
            row.length += len(chunk)
            budget -= len(chunk)
            if not row.todo:
                row.logits = logits


def main() -> None:
    parser = argparse.ArgumentParser(description="one request per prefill forward vs several, same load")
    parser.add_argument("--model_name_or_path", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_model(args.model_name_or_path)
        names = st.make_tasks(lm, Path(tmp), [20, 100] * 4)
        mt = MultiTaskPredictor(lm, tmp)
        reqs, _, need = st.burst(mt, names, 64, 32)
        engines = {"one per forward": OneAtATime(mt, SlotRunner(lm.model, 64, need), 128),
                   "several per forward": Scheduler(mt, SlotRunner(lm.model, 64, need), 128)}
        outs, secs, cpu = {}, {k: [] for k in engines}, {k: [] for k in engines}
        for engine in engines.values():
            engine.start()
            st.run_scheduler(engine, reqs[:8])  # warm-up: every task's prefix cached
        for rnd in range(args.rounds):
            for name in list(engines) if rnd % 2 == 0 else list(engines)[::-1]:
                start = time.process_time()
                r = st.run_scheduler(engines[name], reqs)
                cpu[name].append(time.process_time() - start)
                secs[name].append(r["seconds"])
                outs[name] = r["outs"]
                print(f"round {rnd + 1}: {name:20s} {r['seconds']:6.1f} s ({cpu[name][-1]:6.1f} s CPU)  TTFT p50 {st.pct(r['ttft'], .5):.2f} s",
                      flush=True)
        for engine in engines.values():
            engine.stop()
    old, new = (statistics.median(v) for v in secs.values())
    old_cpu, new_cpu = (statistics.median(v) for v in cpu.values())
    print(f"medians {old:.1f} s -> {new:.1f} s: {old / new:.2f}x; CPU {old_cpu:.1f} s -> {new_cpu:.1f} s: "
          f"{old_cpu / new_cpu:.2f}x; same tokens: {len(set(map(str, outs.values()))) == 1}")


if __name__ == "__main__":
    main()
