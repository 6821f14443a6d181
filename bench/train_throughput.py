#!/usr/bin/env python
"""Training throughput: softprompt's prefix-KV prompt tuning against PEFT's PromptTuning.

Both methods train the same soft prompt (same initial weights) on the same frozen model with
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
from softprompt.engine.forward import AdaptedLM
from softprompt.methods import prompt_tuning
from softprompt.model import load_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = "../shared/datasets"  # relative to the repository root
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}  # parity check: relative loss difference
GRAD_RTOL = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 1e-1}  # max |dgrad| / max |grad|
METHODS = ("peft", "softprompt")
LR = 1e-3


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=DEFAULT_MODEL)
    p.add_argument("--num_virtual_tokens", default="100", help="one length, or a comma-separated sweep: 20,100")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=64, help="target input length (cutoff_len of the examples)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per method per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method before the repeats")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--dataset", default=None, help="default: alpaca_en_demo from ../shared/datasets, else demo_short_answers")
    p.add_argument("--dataset_dir", default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="output folder (default bench/results; output/bench_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run on a tiny random model")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in str(args.num_virtual_tokens).split(",") if x.strip()]
    if args.quick:
        args.steps, args.repeats, args.warmup = min(args.steps, 2), min(args.repeats, 2), min(args.warmup, 1)
    args.out = Path(args.out or REPO / ("output/bench_quick" if args.quick else "bench/results"))
    args.dataset, args.dataset_dir = default_dataset(args.dataset, args.dataset_dir)
    if min(args.lengths) < 1 or args.steps < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--num_virtual_tokens, --steps, --repeats and --batch_size must be positive")
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
    }


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


def make_batches(args: argparse.Namespace, tokenizer, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` right-padded batches of real examples, cut at ``seq_len`` tokens, in a fixed order."""
    data_args = DataArgs(dataset=args.dataset, dataset_dir=str(REPO / args.dataset_dir), cutoff_len=args.seq_len)
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


def softprompt_trainer(base, prompt: torch.Tensor) -> Trainer:
    adapter = prompt_tuning.PromptTuning(*prompt.shape).to(prompt.device)
    with torch.no_grad():
        adapter.embedding.weight.copy_(prompt)
    model = AdaptedLM(base, adapter).train()

    def loss(batch):
        loss_sum, n = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return loss_sum / n

    return Trainer("softprompt", model, adapter.embedding.weight, *_stepper(loss, adapter.embedding.weight))


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
