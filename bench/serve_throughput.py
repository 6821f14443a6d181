#!/usr/bin/env python
"""Serving throughput: the continuous-batching scheduler vs PEFT as a user runs it vs the base model's own loop.

Workload: 8 prompt-tuning tasks (half with 20 virtual tokens, half with 100), 64 chat requests (the
instructions of ``alpaca_en_demo.json`` when ``../shared/datasets`` has it, else built-in questions), mixed
across the tasks, 32 new tokens, greedy. Everything runs in this process, in rounds, interleaved:

- **softprompt, burst**: all 64 requests submitted at once to :class:`softprompt.serve.scheduler.Scheduler`
  (the engine under ``softprompt serve``, without HTTP), ``--max_num_seqs`` slots;
- **softprompt, stream**: the same requests arriving as a Poisson process (rate: ``--rate``, default 70% of
  the burst's requests/s of round 1): time to first token under load;
- **PEFT**: one ``PeftModel`` with the 8 adapters loaded, requests grouped by task, ``set_adapter`` then one
  batched ``generate`` per task (left padding);
- **base loop**: the base model alone, no prompt, all 64 prompts in one left-padded batch, a plain greedy
  decode loop (``model(...)`` with a ``DynamicCache``, only the last logits): the practical limit.

Also: time to first token of one request alone (a task with a cached prefix vs ``base``), RSS after each
round, and how often softprompt's answers equal PEFT's one-at-a-time answers.

    python bench/serve_throughput.py            # the default model (minutes)
    python bench/serve_throughput.py --quick    # a tiny random model (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import peft
import psutil
import torch
import transformers
from peft import PeftModel
from transformers import DynamicCache

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from softprompt.checkpoint import write_adapter_files  # noqa: E402
from softprompt.data.collate import left_pad  # noqa: E402
from softprompt.engine.forward import positions_after  # noqa: E402
from softprompt.engine.generate import SamplingParams  # noqa: E402
from softprompt.engine.slots import SlotRunner  # noqa: E402
from softprompt.methods.prompt_tuning import PromptTuning  # noqa: E402
from softprompt.model import load_model  # noqa: E402
from softprompt.multitask import MultiTaskPredictor, Request  # noqa: E402
from softprompt.serve.scheduler import Scheduler  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Explain photosynthesis in one sentence.",
             "Write a haiku about autumn leaves falling slowly on a quiet river.", "What is 12 times 7?",
             "Give two tips for staying focused while studying for a long exam in a noisy place.", "Define gravity.",
             "Summarize the plot of Romeo and Juliet in two sentences, mentioning both families by name."]


def make_tasks(lm, folder: Path, lengths: list[int]) -> list[str]:
    """One prompt-tuning adapter per length (vocabulary rows, distinct seeds), in PEFT's format."""
    emb = lm.model.get_input_embeddings().weight.detach()
    names = []
    for i, length in enumerate(lengths):
        g = torch.Generator().manual_seed(100 + i)
        module = PromptTuning(length, emb.shape[1])
        with torch.no_grad():
            module.embedding.weight.copy_(emb[torch.randint(0, emb.shape[0], (length,), generator=g)])
        write_adapter_files(folder / f"task{i}", module.adapter_state(), module.adapter_config(lm.name, lm.model))
        names.append(f"task{i}")
    return names


def questions(n: int) -> tuple[list[str], str]:
    path = REPO.parent / "shared" / "datasets" / "alpaca_en_demo.json"
    if path.is_file():
        rows = json.loads(path.read_text())
        return [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""))[:600] for r in rows[:n]], path.name
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(n)], "built-in questions"


def burst(mt: MultiTaskPredictor, names: list[str], n: int, max_new: int,
          virtual: int = 100) -> tuple[list[Request], str, int]:
    """The workload: ``n`` chat requests spread over the tasks ``names``; also where the questions came from and
    the slot length they need (the longest prompt + the longest soft prompt, ``virtual``, + ``max_new``)."""
    texts, source = questions(n)
    requests = [Request(names[i % len(names)], mt.chat_ids([{"role": "user", "content": texts[i]}]),
                        SamplingParams(max_new)) for i in range(n)]
    return requests, source, max(len(r.prompt_ids) for r in requests) + virtual + max_new


def run_scheduler(engine: Scheduler, requests: list[Request], arrivals: list[float] | None = None) -> dict:
    """Submit ``requests`` (all at once, or at ``arrivals`` seconds); seconds, outputs and time to first token."""
    first: dict[int, float] = {}
    sent: dict[int, float] = {}
    start = time.perf_counter()
    jobs = []
    for i, r in enumerate(requests):
        if arrivals is not None:
            time.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
        sent[i] = time.perf_counter()
        jobs.append(engine.submit(r, on_text=lambda _d, i=i: first.setdefault(i, time.perf_counter())))
    outs = [j.future.result(3600) for j in jobs]
    seconds = time.perf_counter() - start
    ttft = [first.get(i, time.perf_counter()) - sent[i] for i in range(len(requests))]
    return {"seconds": seconds, "outs": [o.token_ids for o in outs], "ttft": ttft}


def peft_generate(model, tok, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return [row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row for row in out[:, width:].tolist()]


def run_peft(model, tok, requests: list[Request], max_new: int) -> dict:
    start, outs, by_task = time.perf_counter(), {}, {}
    for i, r in enumerate(requests):
        by_task.setdefault(r.task, []).append(i)
    for task, idx in by_task.items():
        model.set_adapter(task)
        outs.update(zip(idx, peft_generate(model, tok, [requests[i].prompt_ids for i in idx], max_new)))
    return {"seconds": time.perf_counter() - start, "outs": [outs[i] for i in range(len(requests))]}


@torch.no_grad()
def run_base_loop(model, prompts: list[list[int]], max_new: int, pad: int) -> dict:
    """The base model's own batched greedy loop: every row generates ``max_new`` tokens (no EOS stop)."""
    start = time.perf_counter()
    ids, mask = left_pad(prompts, pad)
    cache, pos = DynamicCache(), positions_after(mask, 0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   logits_to_keep=1).logits[:, -1]
    next_pos = pos[:, -1:] + 1
    for _ in range(max_new - 1):
        token = logits.argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        logits = model(input_ids=token, attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                       logits_to_keep=1).logits[:, -1]
        next_pos = next_pos + 1
    return {"seconds": time.perf_counter() - start, "tokens": len(prompts) * max_new}


def ttft_alone(engine: Scheduler, request: Request, times: int) -> float:
    """Median time to first token of ``request`` alone (its prefix already cached), over ``times`` runs."""
    one = Request(request.task, request.prompt_ids, SamplingParams(max_new_tokens=1))
    return statistics.median(run_scheduler(engine, [one])["ttft"][0] for _ in range(times))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def one_round(rnd: int, args, engine, peft_model, lm, requests, record: dict) -> None:
    order = ["softprompt", "peft", "base"] if rnd % 2 == 0 else ["base", "peft", "softprompt"]
    for name in order:
        if name == "softprompt":
            r = run_scheduler(engine, requests)
        elif name == "peft":
            r = run_peft(peft_model, lm.tokenizer, requests, args.max_new_tokens)
        else:
            r = run_base_loop(lm.model, [q.prompt_ids for q in requests], args.max_new_tokens,
                              lm.tokenizer.pad_token_id)
        tokens = r.get("tokens") or sum(map(len, r["outs"]))
        record.setdefault(name, []).append({"seconds": r["seconds"], "tokens": tokens, "ttft": r.get("ttft")})
        if "outs" in r:
            record.setdefault("outs", {})[name] = r["outs"]
        print(f"round {rnd + 1}: {name:10s} {r['seconds']:7.2f} s  {tokens / r['seconds']:7.1f} tok/s", flush=True)
    rate = args.rate or 0.7 * len(requests) / record["softprompt"][0]["seconds"]
    rng = random.Random(rnd)
    arrivals, t = [], 0.0
    for _ in requests:
        arrivals.append(t)
        t += rng.expovariate(rate)
    r = run_scheduler(engine, requests, arrivals)
    record.setdefault("stream", []).append({"seconds": r["seconds"], "tokens": sum(map(len, r["outs"])),
                                            "ttft": r["ttft"], "rate": rate})
    print(f"round {rnd + 1}: stream at {rate:.2f} req/s: TTFT p50 {pct(r['ttft'], .5):.3f} s", flush=True)
    record.setdefault("rss_mb", []).append(round(psutil.Process().memory_info().rss / 2**20, 1))


def measure(args, lm, folder: Path, names: list[str]) -> dict:
    mt = MultiTaskPredictor(lm, str(folder))
    requests, source, need = burst(mt, names, args.requests, args.max_new_tokens, max(args.lengths))
    runner = SlotRunner(lm.model, args.max_num_seqs, need)
    engine = Scheduler(mt, runner, max_queue=args.requests * 2, prefill_chunk=args.max_num_batched_tokens)
    engine.start()
    peft_model = PeftModel.from_pretrained(lm.model, str(folder / names[0]), adapter_name=names[0]).eval()
    for t in names[1:]:
        peft_model.load_adapter(str(folder / t), adapter_name=t)
    run_scheduler(engine, requests[: len(names)])  # warm-up: every task's prefix computed and cached
    record: dict = {}
    for rnd in range(args.rounds):
        one_round(rnd, args, engine, peft_model, lm, requests, record)
    by_length = {length: next(r for r in requests if r.task == names[args.lengths.index(length)])
                 for length in sorted(set(args.lengths))}
    base_req = Request("base", requests[0].prompt_ids, requests[0].params)
    ttft = {"base": ttft_alone(engine, base_req, 5)}
    for length in by_length:
        ttft[f"task with {length} virtual tokens"] = ttft_alone(
            engine, Request(by_length[length].task, requests[0].prompt_ids, requests[0].params), 5)
    single = []
    for r in requests[: args.check]:
        peft_model.set_adapter(r.task)
        single += peft_generate(peft_model, lm.tokenizer, [r.prompt_ids], args.max_new_tokens)
    engine.stop()
    return summarise(args, record, ttft, single, engine, runner, source, requests)


def summarise(args, record, ttft, single, engine, runner, source, requests) -> dict:
    def med(name, key="seconds"):
        return statistics.median(x[key] for x in record[name])

    tok_s = {n: round(statistics.median(x["tokens"] / x["seconds"] for x in record[n]), 1)
             for n in ("softprompt", "peft", "base", "stream")}
    req_s = {n: round(len(requests) / med(n), 3) for n in ("softprompt", "peft")}
    burst = [t for x in record["softprompt"] for t in x["ttft"]]
    stream = [t for x in record["stream"] for t in x["ttft"]]
    sp = record["outs"]["softprompt"][: args.check]
    return {
        "questions": source, "prompt_tokens": {"min": min(len(r.prompt_ids) for r in requests),
                                               "max": max(len(r.prompt_ids) for r in requests)},
        "rounds": {k: record[k] for k in ("softprompt", "peft", "base", "stream")},
        "requests_per_s": req_s, "generated_tokens_per_s": tok_s,
        "speedup_vs_peft": round(req_s["softprompt"] / req_s["peft"], 2),
        "tokens_per_s_vs_base_loop": round(tok_s["softprompt"] / tok_s["base"], 3),
        "ttft_s": {"burst_p50": round(pct(burst, .5), 3), "burst_p99": round(pct(burst, .99), 3),
                   "stream_p50": round(pct(stream, .5), 3), "stream_p99": round(pct(stream, .99), 3),
                   "stream_rate_req_s": round(record["stream"][0]["rate"], 2),
                   "alone": {k: round(v, 4) for k, v in ttft.items()}},
        "rss_mb_after_each_round": record["rss_mb"],
        "kv_pool_mb": round(runner.pool.nbytes / 2**20, 1),
        "prefix_cache": engine.prefixes.stats,
        "softprompt_equals_peft_one_at_a_time": round(sum(a == b for a, b in zip(sp, single)) / len(single), 3),
        "rows_checked": len(single),
    }


def describe_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor() or "CPU")
    return f"{name} ({torch.get_num_threads()} threads)"


def write_outputs(args, result: dict, device: str, model_name: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/serve_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"benchmark": "serve_throughput", "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": command.strip(), "device": device, "model": model_name,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, **result}
    stem = "serve_throughput_quick" if args.quick else "serve_throughput"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    rps, tps, t = result["requests_per_s"], result["generated_tokens_per_s"], result["ttft_s"]
    alone = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t["alone"].items())
    md = [
        f"Command: `{command.strip()}`  ",
        f"{device}, {model_name}, {len(args.lengths)} tasks ({'/'.join(map(str, sorted(set(args.lengths))))} virtual "
        f"tokens), {args.requests} chat requests ({result['questions']}, {result['prompt_tokens']['min']}-"
        f"{result['prompt_tokens']['max']} prompt tokens), {args.max_new_tokens} new tokens, greedy, "
        f"--max_num_seqs {args.max_num_seqs}, --max_num_batched_tokens {args.max_num_batched_tokens}, "
        f"{args.rounds} rounds interleaved (medians).",
        "",
        "| measure | softprompt | reference | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| requests/s, all arrive together (vs PEFT grouped by task) | {rps['softprompt']} | {rps['peft']} "
        f"| {result['speedup_vs_peft']}x | >= 3x |",
        f"| generated tokens/s (vs PEFT) | {tps['softprompt']} | {tps['peft']} "
        f"| {tps['softprompt'] / tps['peft']:.2f}x | |",
        f"| generated tokens/s (vs the base model's plain batched greedy loop, no prompt) | {tps['softprompt']} "
        f"| {tps['base']} | {result['tokens_per_s_vs_base_loop']:.0%} | >= 60% |",
        f"| generated tokens/s, Poisson stream at {t['stream_rate_req_s']} req/s | {tps['stream']} | | | |",
        f"| TTFT p50 / p99, all together | {t['burst_p50']} s / {t['burst_p99']} s | | | |",
        f"| TTFT p50 / p99, Poisson stream | {t['stream_p50']} s / {t['stream_p99']} s | | | |",
        f"| TTFT alone (prefix cached) | {alone} | | | task - base < 10 ms |",
        f"| RSS after each round (MB) | {' / '.join(map(str, result['rss_mb_after_each_round']))} | | | flat |",
        f"| softprompt answers == PEFT one at a time | {result['softprompt_equals_peft_one_at_a_time']:.0%} "
        f"({result['rows_checked']} rows) | | | |",
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model_name_or_path", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 100, 20, 100, 20, 100, 20, 100],
                        help="virtual tokens of each task")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_num_seqs", type=int, default=64)
    parser.add_argument("--max_num_batched_tokens", type=int, default=512, help="prompt tokens per prefill step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second (default: 70%% of "
                        "the burst's requests/s in round 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", type=int, default=64, help="requests compared with PEFT one at a time")
    parser.add_argument("--quick", action="store_true", help="a tiny random model (seconds)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_name_or_path
        if args.quick:
            from tests.tiny import build_tiny

            model = str(build_tiny(Path(tmp) / "tiny"))
            args.requests, args.check, args.max_new_tokens = min(args.requests, 16), min(args.check, 16), 8
            args.lengths = [3, 9, 3, 9]
        lm = load_model(model)
        names = make_tasks(lm, Path(tmp) / "prompts", args.lengths)
        result = measure(args, lm, Path(tmp) / "prompts", names)
        write_outputs(args, result, describe_device(), "tiny-random" if args.quick else args.model_name_or_path)


if __name__ == "__main__":
    main()
