#!/usr/bin/env python
"""Training throughput: softprompt's prefix-KV prompt tuning against PEFT's PromptTuning.

Three trainers: PEFT, softprompt with the batch's common token prefix run once (``softprompt``, the
default ``shared_prefix=True``) and softprompt running every row whole (``softprompt_rows``). They train the same soft prompt (same initial weights) on the same frozen model with
the same batches. A step is forward + backward + AdamW on the prompt only. softprompt runs the
prompt once per batch (batch 1) and lets every row attend to its expanded K/V; PEFT concatenates
the prompt to every row. Throughput counts *real* tokens only (the sum of attention_mask;
virtual tokens are not counted), so the two numbers measure the same useful work.

Machines are noisy, so the methods are interleaved within every repeat (A B, then B A, ...),
and the report gives medians over repeats, the ratio of the medians and the spread of the
per-repeat ratios. Before timing, one forward + backward on the first batch checks that the two
compute the same loss and gradient; the benchmark stops if they do not.

    .venv/bin/python bench/train_throughput.py                 # the default model, 100 virtual tokens
    .venv/bin/python bench/train_throughput.py --num_virtual_tokens 20,100
    .venv/bin/python bench/train_throughput.py --quick         # seconds: a tiny random model
    .venv/bin/python bench/train_throughput.py --rows sst2     # only the SST-2-shaped rows

Two row sets (``--rows``): ``alpaca`` (alpaca_en_demo, varied instructions; rows share the chat
template's system text) and ``sst2`` (one instruction for every row, a short phrase, one answer word:
bench/sst2_rows.py).

Writes ``train_throughput.json`` and ``train_throughput.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import peft
import torch
import transformers
from peft import PromptTuningConfig, get_peft_model
from tqdm.auto import tqdm

from softprompt.config import DEFAULT_MODEL, DataArgs, MethodArgs
from softprompt.data import collate, load_and_tokenize
from softprompt.engine.forward import AdaptedLM, shared_length
from softprompt.methods import prompt_tuning
from softprompt.model import load_model

from sst2_rows import MAX_ROWS, sst2_dataset  # bench/, this script's folder
from throughput_report import METHODS, data_stats, noise_warnings, print_table, print_warnings, write_outputs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = "../shared/datasets"  # relative to the repository root
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}  # parity check: relative loss difference
GRAD_RTOL = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 1e-1}  # max |dgrad| / max |grad|
ROW_SETS = ("alpaca", "sst2")
SST2_SEQ_LEN = 128
"""SST-2 rows are cut at max(--seq_len, this): with the default model they run to ~100 tokens, and a cut prompt
loses its middle (the instruction, which the rows share)."""
LR = 1e-3


# ----------------------------------------------------------------------------- arguments


RUN_DEFAULTS = {"steps": 3, "repeats": 3, "warmup": 1}
QUICK_DEFAULTS = {"steps": 2, "repeats": 2, "warmup": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="ignored with --quick")
    p.add_argument("--num_virtual_tokens", default="100", help="one length, or a comma-separated sweep: 20,100")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=64, help="target input length (cutoff_len of the examples)")
    p.add_argument("--steps", type=int, help="measured steps per method per repeat (default 3; 2 with --quick)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3; 2 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps per method before the repeats (default 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--dataset", default=None, help="default: alpaca_en_demo from ../shared/datasets, else demo_short_answers")
    p.add_argument("--dataset_dir", default=None, help="relative paths are taken from the repository root")
    p.add_argument("--rows", default="alpaca,sst2", help="row sets, comma-separated: alpaca (--dataset), sst2")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--out", default=None, help="output folder (default bench/results; output/bench_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run on a tiny random model")
    args = p.parse_args(argv)
    for key, value in (QUICK_DEFAULTS if args.quick else RUN_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.lengths = [int(x) for x in str(args.num_virtual_tokens).split(",") if x.strip()]
    except ValueError:
        p.error(f"--num_virtual_tokens must be integers separated by commas, got {args.num_virtual_tokens!r}")
    if not args.lengths or min(args.lengths) < 1 or min(args.steps, args.repeats, args.batch_size) < 1 or args.warmup < 0:
        p.error("--num_virtual_tokens, --steps, --repeats and --batch_size must be positive, --warmup not negative")
    args.row_sets = [x.strip() for x in args.rows.split(",") if x.strip()]
    if not args.row_sets or set(args.row_sets) - set(ROW_SETS):
        p.error(f"--rows takes {', '.join(ROW_SETS)} (comma-separated), got {args.rows!r}")
    args.out = Path(args.out or REPO / ("output/bench_quick" if args.quick else "bench/results"))
    args.dataset, args.dataset_dir = default_dataset(args.dataset, args.dataset_dir)
    return args


def default_dataset(dataset: str | None, dataset_dir: str | None) -> tuple[str, str]:
    """alpaca_en_demo from the shared folder when it is there, else the shipped demo data."""
    if dataset is not None:
        return dataset, dataset_dir or "data"
    shared = REPO / SHARED_DATASETS / "dataset_info.json"
    if dataset_dir is None and shared.is_file() and "alpaca_en_demo" in json.loads(shared.read_text()):
        return "alpaca_en_demo", SHARED_DATASETS
    return "demo_short_answers", dataset_dir or "data"


# ----------------------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "platform": platform.platform(),
        "loadavg_1m_at_start": _loadavg(),
    }


def _loadavg() -> float | None:
    """1-minute load average. At start it shows other work on the machine; at the end it also
    counts the benchmark's own threads, so well above ``torch_threads`` means competition."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ----------------------------------------------------------------------------- model and data


def load_base(args: argparse.Namespace, tmp: str):
    """The frozen base model and tokenizer; ``--quick`` builds a tiny random LLaMA first."""
    name = args.model_name_or_path
    if args.quick:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny import build_tiny  # noqa: PLC0415  (tests/tiny.py, only needed here)

        name = str(build_tiny(Path(tmp) / "tiny"))
    lm = load_model(name, dtype=DTYPES[args.dtype])
    label = "tiny (random 2-layer LLaMA)" if args.quick else args.model_name_or_path
    return lm.model, lm.tokenizer, label


def make_batches(args: argparse.Namespace, tokenizer, count: int, dataset: str, dataset_dir: str,
                 max_samples: int | None = None, cutoff: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``count`` right-padded batches of real examples, cut at ``cutoff`` (``seq_len``) tokens, in a fixed order."""
    data_args = DataArgs(dataset=dataset, dataset_dir=str(REPO / dataset_dir), cutoff_len=cutoff or args.seq_len,
                         max_samples=max_samples)
    examples, _ = load_and_tokenize(data_args, tokenizer, args.seed)
    random.Random(args.seed).shuffle(examples)
    need = count * args.batch_size
    rows = [examples[i % len(examples)] for i in range(need)]  # cycle if the dataset is small
    return [collate(rows[i : i + args.batch_size], tokenizer.pad_token_id) for i in range(0, need, args.batch_size)]


@dataclass
class Trainer:
    """One method ready to step: ``step(batch) -> loss`` does forward, backward and AdamW."""

    name: str
    model: torch.nn.Module
    weight: torch.nn.Parameter
    step: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]


def softprompt_trainer(base, prompt: torch.Tensor, shared: bool) -> Trainer:
    """softprompt's engine; ``shared``: the batch's common token prefix runs once (AdaptedLM's shared_prefix)."""
    adapter = prompt_tuning.PromptTuning(*prompt.shape).to(prompt.device)
    with torch.no_grad():
        adapter.embedding.weight.copy_(prompt)
    model = AdaptedLM(base, adapter, shared_prefix=shared).train()

    def loss(batch):
        loss_sum, n = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return loss_sum / n

    name = "softprompt" if shared else "softprompt_rows"
    return Trainer(name, model, adapter.embedding.weight, *_stepper(loss, adapter.embedding.weight))


def peft_trainer(base, prompt: torch.Tensor) -> Trainer:
    """PEFT's PromptTuning on a deep copy: get_peft_model wraps and re-freezes the model it gets."""
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt.shape[0])
    model = get_peft_model(copy.deepcopy(base), config).train()
    weight = model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(prompt)

    def loss(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    return Trainer("peft", model, weight, *_stepper(loss, weight))


def _stepper(loss_fn, weight: torch.nn.Parameter):
    optimizer = torch.optim.AdamW([weight], lr=LR)

    def step(batch):
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, loss_fn


def initial_prompt(base, tokenizer, length: int, seed: int) -> torch.Tensor:
    """softprompt's own random init (scaled to the vocabulary embeddings), fp32, on the model's device."""
    weight = prompt_tuning.initial_prompt(
        MethodArgs(num_virtual_tokens=length), base.get_input_embeddings().weight, tokenizer,
        torch.Generator().manual_seed(seed),
    )
    return weight.to(base.device)


def check_base_untouched(base) -> None:
    """softprompt's base must stay frozen and unwrapped after PEFT was built (on its own copy)."""
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    if trainable:
        raise SystemExit(f"base model has trainable parameters after building PEFT: {trainable[:3]}")
    if any("peft" in type(m).__module__ for m in base.modules()):
        raise SystemExit("base model was modified by PEFT (it holds PEFT modules)")


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parity(trainers: dict[str, Trainer], batch: dict[str, torch.Tensor], dtype: str) -> dict:
    """Loss and gradient of every trainer on one batch, before any update: each softprompt one must agree
    with PEFT (loss: relative difference; gradient: max |dgrad| / max |grad| and ||dgrad|| / ||grad||)."""
    losses, grads = {}, {}
    for name, t in trainers.items():
        loss = t.loss(batch)
        loss.backward()
        losses[name] = float(loss.detach())
        grads[name] = t.weight.grad.detach().float().clone()
        t.weight.grad = None
    out: dict = {"loss": losses, "loss_rel_tol": LOSS_RTOL[dtype], "grad_rel_tol": GRAD_RTOL[dtype], "ok": True,
                 "prompt_dtype": {name: str(t.weight.dtype).removeprefix("torch.") for name, t in trainers.items()}}
    ref = grads["peft"]
    for name in METHODS[1:]:
        loss_rel = abs(losses[name] - losses["peft"]) / abs(losses["peft"])
        grad_rel = float((grads[name] - ref).abs().max() / ref.abs().max())
        out[name] = {"loss_rel_diff": loss_rel, "grad_max_rel_diff": grad_rel,
                     "grad_norm_rel_diff": float((grads[name] - ref).norm() / ref.norm())}
        out["ok"] &= loss_rel < LOSS_RTOL[dtype] and grad_rel < GRAD_RTOL[dtype]
    return out


def timed(trainer: Trainer, batches: list[dict], device: torch.device, bar) -> float:
    """Seconds for one pass of training steps over ``batches``."""
    gc.collect()
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        trainer.step(batch)
        bar.update(1)
    sync(device)
    return time.perf_counter() - start


def peak_memory(trainers: dict[str, Trainer], batch: dict, device: torch.device) -> dict | None:
    """CUDA only: peak allocated bytes during one step of each method, measured separately.

    ``peak_bytes`` includes every resident tensor (both models' weights); ``step_bytes`` is the
    peak above what was allocated before the step (activations, logits, gradients).
    """
    if device.type != "cuda":
        return None
    out = {}
    for name, t in trainers.items():
        gc.collect()
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t.step(batch)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        out[name] = {"peak_bytes": peak, "step_bytes": peak - before}
    return out


def bench_setting(args, base, tokenizer, batches: list[dict], length: int, device, bar) -> dict:
    """Parity check, warmup, then ``repeats`` interleaved timings of the trainers at one prompt length."""
    prompt = initial_prompt(base, tokenizer, length, args.seed)
    trainers = {"peft": peft_trainer(base, prompt), "softprompt": softprompt_trainer(base, prompt, True),
                "softprompt_rows": softprompt_trainer(base, prompt, False)}
    check_base_untouched(base)
    check = parity(trainers, batches[0], args.dtype)
    if not check["ok"]:
        raise SystemExit(f"softprompt and PEFT disagree at {length} virtual tokens, not timing them: {check}")
    warmup, measured = batches[: args.warmup], batches[args.warmup :]
    for t in trainers.values():
        for batch in warmup:
            t.step(batch)
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for name in METHODS[r % 3:] + METHODS[:r % 3]:  # A B C, B C A, C A B, ...: no method always goes first
            bar.set_postfix_str(f"L={length} repeat {r + 1}/{args.repeats} {name}")
            seconds[name].append(timed(trainers[name], measured, device, bar))
    memory = peak_memory(trainers, measured[0], device)
    del trainers
    gc.collect()
    return summarise(length, measured, seconds, check, memory)


def summarise(length: int, measured: list[dict], seconds: dict, check: dict, memory: dict | None) -> dict:
    tokens = sum(int(b["attention_mask"].sum()) for b in measured)
    tps = {m: [tokens / s for s in seconds[m]] for m in METHODS}
    median = {m: statistics.median(tps[m]) for m in METHODS}
    ratios = [s / p for s, p in zip(tps["softprompt"], tps["peft"])]
    rows_ratios = [s / p for s, p in zip(tps["softprompt_rows"], tps["peft"])]
    return {
        "num_virtual_tokens": length,
        "parity": check,
        "real_tokens_per_repeat": tokens,
        "seconds": seconds,
        "tokens_per_s": tps,
        "median_tokens_per_s": median,
        "speedup": median["softprompt"] / median["peft"],
        "per_repeat_speedup": ratios,
        "per_repeat_speedup_min": min(ratios),
        "per_repeat_speedup_max": max(ratios),
        "speedup_rows": median["softprompt_rows"] / median["peft"],
        "per_repeat_speedup_rows": rows_ratios,
        "shared_vs_rows": median["softprompt"] / median["softprompt_rows"],
        "shared_tokens_per_batch": [shared_length(b["input_ids"], b["attention_mask"], b["labels"]) for b in measured],
        "memory": memory,
    }


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([".venv/bin/python", "bench/train_throughput.py", *args])


# ----------------------------------------------------------------------------- main


def row_batches(args: argparse.Namespace, tokenizer, tmp: str) -> dict[str, tuple[str, int, list[dict]]]:
    """Each row set's (description, the length rows are cut at, batches): ``alpaca`` from --dataset, ``sst2`` from bench/sst2_rows.py."""
    count, out = args.warmup + args.steps, {}
    for name in args.row_sets:
        if name == "sst2":
            dataset, folder, source = sst2_dataset(REPO, SHARED_DATASETS, tmp, args.seed)
            cutoff = max(args.seq_len, SST2_SEQ_LEN)  # whole rows: a cut prompt loses its middle, the instruction
            out[name] = (source, cutoff, make_batches(args, tokenizer, count, dataset, folder, MAX_ROWS, cutoff))
        else:
            out[name] = (f"{args.dataset} ({args.dataset_dir})", args.seq_len,
                         make_batches(args, tokenizer, count, args.dataset, args.dataset_dir))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.getLogger("softprompt").setLevel(logging.ERROR)  # truncation at seq_len is intended here
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside PEFT
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start, load_at_start = time.perf_counter(), _loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base, tokenizer, label = load_base(args, tmp)
        sets = row_batches(args, tokenizer, tmp)
    base.to(device)
    total = len(sets) * len(args.lengths) * args.repeats * len(METHODS) * args.steps
    results = []
    with tqdm(total=total, desc="measured steps", unit="step") as bar:
        for name, (_, _, batches) in sets.items():
            batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
            for n in args.lengths:
                results.append({"rows": name, **bench_setting(args, base, tokenizer, batches, n, device, bar)})
    env = environment(device)
    env["loadavg_1m_at_start"], env["loadavg_1m_at_end"] = load_at_start, _loadavg()
    report = {
        "benchmark": "train_throughput",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "wall_seconds": time.perf_counter() - start,
        "environment": env,
        "settings": {
            "model": label, "num_virtual_tokens": args.lengths, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "dtype": args.dtype, "steps": args.steps, "repeats": args.repeats,
            "warmup": args.warmup, "rows": args.row_sets, "dataset": args.dataset, "dataset_dir": args.dataset_dir,
            "seed": args.seed, "optimizer": f"AdamW lr={LR} on the prompt only",
            "order": "interleaved per repeat, rotated: A B C, B C A, C A B, ...", "quick": args.quick,
        },
        "data": {name: {"source": source, "cut_at": cut, **data_stats(b[args.warmup:])}
                 for name, (source, cut, b) in sets.items()},
        "results": results,
    }
    report["warnings"] = noise_warnings(report)
    print_table(report)
    print_warnings(report)
    write_outputs(report, args.out)
    return report


if __name__ == "__main__":
    main()
