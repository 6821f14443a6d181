#!/usr/bin/env python
"""Serving throughput: one base model, four soft-prompt tasks, requests mixed across them.

softprompt: ``MultiTaskPredictor.run`` on batches taken in arrival order (tasks mixed in one
batch; each task's prefix K/V computed once and cached). PEFT, the way a PEFT user does it
today: one ``PeftModel`` with the four adapters loaded (``load_adapter``), requests grouped by
task, ``set_adapter`` then batched ``generate`` (left padding) per group. Same prompts, greedy,
same ``max_new_tokens``; both run in this process one after the other, twice, interleaved.

Also measured: the time to answer the first request of a task not loaded yet (softprompt:
read the adapter, compute its prefix, answer; PEFT: ``load_adapter``, ``set_adapter``,
answer), how often PEFT's batched answers equal its own one-at-a-time answers (its prompt sits
in front of the left padding), and how often softprompt's mixed-batch answers equal PEFT's
one-at-a-time answers.

    .venv/bin/python bench/serve_throughput.py            # default model, 4 tasks x 8 requests
    .venv/bin/python bench/serve_throughput.py --quick    # a tiny random model, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from softprompt.checkpoint import write_adapter_files  # noqa: E402
from softprompt.data import load_conversations  # noqa: E402
from softprompt.config import DataArgs  # noqa: E402
from softprompt.engine.generate import SamplingParams  # noqa: E402
from softprompt.methods.prompt_tuning import PromptTuning  # noqa: E402
from softprompt.model import load_model  # noqa: E402
from softprompt.multitask import MultiTaskPredictor, Request  # noqa: E402


def make_tasks(lm, folder: Path, n_tasks: int, length: int) -> list[str]:
    """Write ``n_tasks`` prompt-tuning adapters (vocabulary rows, distinct seeds) in PEFT's format."""
    emb = lm.model.get_input_embeddings().weight.detach()
    names = []
    for i in range(n_tasks + 1):  # the last one is the "not loaded yet" task
        g = torch.Generator().manual_seed(100 + i)
        module = PromptTuning(length, emb.shape[1])
        with torch.no_grad():
            module.embedding.weight.copy_(emb[torch.randint(0, emb.shape[0], (length,), generator=g)])
        name = f"task{i}"
        write_adapter_files(folder / name, module.adapter_state(), module.adapter_config(lm.name, lm.model))
        names.append(name)
    return names


def prompts_from_data(lm, n: int) -> list[list[dict]]:
    convs = load_conversations(DataArgs(dataset="demo_short_answers", dataset_dir=str(REPO / "data")))
    return [[c.messages[0]] for c in convs[:n]]


def run_softprompt(mt: MultiTaskPredictor, requests: list[Request], batch: int) -> tuple[float, list[list[int]]]:
    start, outs = time.perf_counter(), []
    for i in range(0, len(requests), batch):
        outs += [r.token_ids for r in mt.run(requests[i:i + batch])]
    return time.perf_counter() - start, outs


def peft_generate(model, tok, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return rows


def run_peft(model, tok, requests: list[Request], batch: int) -> tuple[float, list[list[int]]]:
    start, outs = time.perf_counter(), {}
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        by_task.setdefault(r.task, []).append(i)
    for task, idx in by_task.items():
        model.set_adapter(task)
        for j in range(0, len(idx), batch):
            chunk = idx[j:j + batch]
            got = peft_generate(model, tok, [requests[i].prompt_ids for i in chunk], requests[0].params.max_new_tokens)
            outs.update(zip(chunk, got))
    return time.perf_counter() - start, [outs[i] for i in range(len(requests))]


def first_request_times(mt, peft_model, tok, folder: Path, new_task: str, prompt: list[int], max_new: int) -> dict:
    start = time.perf_counter()
    mt.run([Request(new_task, prompt, SamplingParams(max_new))])
    sp = time.perf_counter() - start
    start = time.perf_counter()
    peft_model.load_adapter(str(folder / new_task), adapter_name=new_task)
    peft_model.set_adapter(new_task)
    peft_generate(peft_model, tok, [prompt], max_new)
    return {"softprompt_s": round(sp, 3), "peft_s": round(time.perf_counter() - start, 3)}


def describe_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor() or "CPU")
    return f"{name} ({torch.get_num_threads()} threads)"


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def measure(args, lm, folder: Path, names: list[str]) -> dict:
    tasks, new_task = names[:-1], names[-1]
    tok = lm.tokenizer
    mt = MultiTaskPredictor(lm, str(folder))
    chats = prompts_from_data(lm, args.requests)
    requests = [Request(tasks[i % len(tasks)], mt.chat_ids(chats[i % len(chats)]), SamplingParams(args.max_new_tokens))
                for i in range(args.requests)]
    peft_model = PeftModel.from_pretrained(lm.model, str(folder / tasks[0]), adapter_name=tasks[0]).eval()
    for t in tasks[1:]:
        peft_model.load_adapter(str(folder / t), adapter_name=t)
    mt.registry.prefix(tasks[0])  # warm-up: one task's prefix; the others are computed inside the run
    runs = {"softprompt": [], "peft": []}
    outs = {}
    for rep in range(args.repeats):
        order = ("softprompt", "peft") if rep % 2 == 0 else ("peft", "softprompt")
        for name in order:
            secs, outs[name] = (run_softprompt(mt, requests, args.batch_size) if name == "softprompt"
                                else run_peft(peft_model, tok, requests, args.batch_size))
            runs[name].append(secs)
            print(f"repeat {rep + 1}: {name:10s} {secs:7.2f} s")
    single = []
    for r in requests[: args.check]:
        peft_model.set_adapter(r.task)
        single += peft_generate(peft_model, tok, [r.prompt_ids], args.max_new_tokens)
    first = first_request_times(mt, peft_model, tok, folder, new_task, requests[0].prompt_ids, args.max_new_tokens)
    tokens = {k: sum(map(len, v)) for k, v in outs.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "seconds": runs, "median_seconds": med,
        "requests_per_s": {k: round(args.requests / med[k], 3) for k in med},
        "tokens_per_s": {k: round(tokens[k] / med[k], 2) for k in med},
        "generated_tokens": tokens,
        "speedup": round(med["peft"] / med["softprompt"], 3),
        "first_request_of_new_task": first,
        "agreement_with_peft_one_at_a_time": {
            "softprompt_mixed_batches": agreement(outs["softprompt"][: args.check], single),
            "peft_grouped_batches": agreement(outs["peft"][: args.check], single),
            "rows_checked": args.check,
        },
        "memory": {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   "prefix_cache_bytes": mt.registry.cached_bytes,
                   "adapter_file_bytes": sum((folder / t / "adapter_model.safetensors").stat().st_size for t in tasks)},
    }


def write_outputs(args, result: dict, device: str, model_name: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/serve_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"benchmark": "serve_throughput", "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": command.strip(), "device": device, "model": model_name,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, **result}
    (out / "serve_throughput.json").write_text(json.dumps(record, indent=1) + "\n")
    rps, tps, first = result["requests_per_s"], result["tokens_per_s"], result["first_request_of_new_task"]
    agree = result["agreement_with_peft_one_at_a_time"]
    md = [
        "| device | model | tasks x requests | batch | new tokens | PEFT req/s | softprompt req/s | speedup "
        "| first request of a new task (PEFT / softprompt) | PEFT batched == unbatched | softprompt mixed == PEFT unbatched |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| {device} | {model_name} | {args.tasks} x {args.requests // args.tasks} | {args.batch_size} "
        f"| {args.max_new_tokens} | {rps['peft']} ({tps['peft']} tok/s) | {rps['softprompt']} ({tps['softprompt']} tok/s) "
        f"| {result['speedup']}x | {first['peft_s']} s / {first['softprompt_s']} s "
        f"| {agree['peft_grouped_batches']:.0%} | {agree['softprompt_mixed_batches']:.0%} |",
        "", f"Reproduce: `{command.strip()}`", "",
    ]
    (out / "serve_throughput.md").write_text("\n".join(md))
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model_name_or_path", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--num_virtual_tokens", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--check", type=int, default=16, help="requests compared with PEFT one at a time")
    parser.add_argument("--quick", action="store_true", help="a tiny random model (seconds)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_name_or_path
        if args.quick:
            from tests.tiny import build_tiny

            model = str(build_tiny(Path(tmp) / "tiny"))
            args.requests, args.check = min(args.requests, 16), min(args.check, 8)
        lm = load_model(model)
        names = make_tasks(lm, Path(tmp) / "prompts", args.tasks, args.num_virtual_tokens)
        result = measure(args, lm, Path(tmp) / "prompts", names)
        write_outputs(args, result, describe_device(), "tiny-random" if args.quick else args.model_name_or_path)


if __name__ == "__main__":
    main()
