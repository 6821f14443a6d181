#!/usr/bin/env python
"""Peak memory and tokens/s of prompt tuning, prefix tuning, LoRA and full fine-tuning on a
randomly initialised LLaMA-shaped model (1B or 7B shape), built on the device at hand.

Nothing is downloaded: the model is ``LlamaForCausalLM(config)`` with TinyLlama-1.1B's or
Llama-2-7B's dimensions and random weights (memory and speed do not depend on the values).
Each (shape, method) runs in a fresh subprocess so that peaks never mix: on a GPU the peak is
``torch.cuda.max_memory_allocated``; on a CPU it is the process's peak resident set size
(``ru_maxrss``), which includes the Python/torch runtime (reported separately as the baseline).
A step is forward + backward + AdamW over the method's trainable parameters:

- prompt_tuning / prefix_tuning: softprompt's own engine (``METHODS[...].create`` +
  ``AdaptedLM``: the prompt's K/V once per batch, loss only where a label is), the base frozen;
- lora: softprompt's ``lora`` method (``peft``'s LoRA, rank 8, every linear layer but the head);
- full: every weight trains (softprompt's ``full`` method), AdamW state for all of them.

Defaults: on a GPU batch 4 x 512 tokens in bf16 (fp16 where bf16 is missing), shapes 1b and 7b;
on a CPU batch 1 x 128 in fp32, shape 1b. Full fine-tuning whose computed need (16 bytes per
parameter in fp32 with AdamW: weights, gradients, two moments) exceeds ``--max_full_gb`` is not
run; its row gives that figure, marked "computed, not measured".

    .venv/bin/python bench/memory.py                          # the device at hand, its defaults
    .venv/bin/python bench/memory.py --shapes 1b --methods prompt_tuning,lora --steps 2
    .venv/bin/python bench/memory.py --quick                  # seconds: a tiny shape, 1 step
    .venv/bin/python bench/memory.py --bits 32,16,8,4 --methods prompt_tuning --steps 3   # quantized bases

``--bits`` compares the base's precision instead: the random model is saved once (bf16 safetensors, so every
row starts from the same weights) and each worker loads it as softprompt does: 32 = fp32, 16 = bf16 weights
under bf16 autocast (fp16 on a GPU without bf16), 8 / 4 = ``--quantization_bit`` (bitsandbytes LLM.int8() /
NF4 linear layers, the rest fp32). It reports the weights' bytes, the RSS after loading, the peak while
training (CPU: the process's high-water mark reset after loading; GPU: max allocated), tokens/s, and the
loss at each step on one fixed batch with AdamW at ``--learning_rate`` (default 1e-2 there): whether the
prompt trains as well on the quantized base.

Writes ``memory_<cpu|cuda>.json`` and ``.md`` (``memory_bits_<cpu|cuda>`` with ``--bits``) under ``--out``
(default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # LlamaConfig fields; vocab 32000 and untied heads as in both originals
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),  # TinyLlama-1.1B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),  # Llama-2-7B
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),  # --quick
}
VOCAB = 32000
METHOD_NAMES = ("prompt_tuning", "prefix_tuning", "lora", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BITS = (32, 16, 8, 4)
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", help="comma-separated: 1b,7b (default: 1b,7b on a GPU, 1b on a CPU)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES))
    p.add_argument("--batch_size", type=int, help="default 4 on a GPU, 1 on a CPU")
    p.add_argument("--seq_len", type=int, help="tokens per row; default 512 on a GPU, 128 on a CPU")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 (fp16) on a GPU, fp32 on a CPU")
    p.add_argument("--steps", type=int, default=2, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--num_virtual_tokens", type=int, default=20)
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--max_full_gb", type=float, help="run full fine-tuning only below this computed need "
                   "(default: 80%% of the GPU's memory; 10 GiB on a CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on a CPU")
    p.add_argument("--bits", help="comma-separated base precisions to compare (32,16,8,4): 8 and 4 are "
                   "--quantization_bit; the methods run on each (default: the method comparison, no quantization)")
    p.add_argument("--learning_rate", type=float, help="AdamW's learning rate (default 1e-5; 1e-2 with --bits)")
    p.add_argument("--quick", action="store_true", help="a tiny shape, 1 step: checks the script in seconds")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # shape:method[:bits], run inside a fresh process
    p.add_argument("--model_folder", help=argparse.SUPPRESS)  # --bits: where the saved random model is
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    if args.quick:
        args.shapes, args.steps, args.warmup = args.shapes or "tiny", 1, 1
    args.shapes = args.shapes or ("1b,7b" if gpu and not args.bits else "1b")
    args.learning_rate = args.learning_rate or (1e-2 if args.bits else 1e-5)
    args.batch_size = args.batch_size or (4 if gpu else 1)
    args.seq_len = args.seq_len or (512 if gpu else 128)
    if args.dtype is None:
        args.dtype = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "fp32"
    if args.max_full_gb is None:
        args.max_full_gb = 0.8 * torch.cuda.get_device_properties(0).total_memory / GIB if gpu else 10.0
    return args


def n_params(shape: str) -> int:
    s = SHAPES[shape]
    d, f, n, h, kv = (s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"],
                      s["num_attention_heads"], s["num_key_value_heads"])
    attn = d * d * 2 + 2 * d * (d // h) * kv  # q, o + k, v
    return n * (attn + 3 * d * f + 2 * d) + 2 * VOCAB * d + d


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- one measurement (worker)


def build(shape: str, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, tie_word_embeddings=False,
                         **SHAPES[shape])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the weights are made in their final dtype: no fp32 copy first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.requires_grad_(False).eval()


def quantized_model_folder(shape: str, folder: Path) -> Path:
    """The random model of ``shape`` saved once in bf16 (what every ``--bits`` row loads), with its config."""
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        build(shape, torch.bfloat16, torch.device("cpu")).save_pretrained(folder)
    return folder


def load_bits(folder: Path, bits: int, dtype: torch.dtype):
    """The saved model as a ``--bits`` row runs it: fp32, 16-bit, or bitsandbytes' 8 / 4-bit linear layers (as
    ``softprompt.model.load_model`` does for --quantization_bit); on a GPU it is moved there (8/4: quantized there)."""
    from transformers import AutoModelForCausalLM

    from softprompt.model import keep_differentiable, quantization_kwargs

    weights = {32: torch.float32, 16: dtype if dtype != torch.float32 else torch.bfloat16}.get(bits, torch.float32)
    quantize = quantization_kwargs(bits if bits < 16 else None)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=weights, **quantize)
    if bits >= 16 and torch.cuda.is_available():
        model.cuda()
    return keep_differentiable(model.requires_grad_(False).eval())


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (Linux: ``/proc/self/clear_refs``), so VmHWM measures from here."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_since_reset() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def make_adapter(method: str, base, args):
    from softprompt.config import MethodArgs
    from softprompt.methods import METHODS

    extra = {"num_virtual_tokens": args.num_virtual_tokens} if method.endswith("_tuning") else {}
    if method == "lora":
        extra = {"lora_rank": args.lora_rank}
    margs = MethodArgs(finetuning_type=method, **extra)
    adapter = METHODS[method].create(base, None, margs, torch.Generator().manual_seed(0))
    if method.endswith("_tuning"):
        adapter.to(base.device)  # stays fp32: the master copy; the engine casts for the frozen base
    return adapter


def measure(args, shape: str, method: str, bits: int | None = None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    baseline = rss_bytes()
    if bits is None:
        base = build(shape, dtype, device)
    else:
        base = load_bits(Path(args.model_folder), bits, dtype)
        if bits in (32, 16):  # 8 / 4: the quantized layers compute in the run's --dtype (fp32 on a CPU)
            dtype = torch.float32 if bits == 32 else (dtype if dtype != torch.float32 else torch.bfloat16)
    weights = base.get_memory_footprint() if bits else sum(p.numel() * p.element_size() for p in base.parameters())
    after_build = rss_bytes()
    reset_peak_rss()
    row = train_steps(args, base, make_adapter(method, base, args), dtype, device)
    params = n_params(shape) if bits else sum(p.numel() for p in base.parameters())  # 4-bit packs two per byte
    row.update(shape=shape, method=method, measured=True, params=params,
               weights_bytes=weights,
               peak_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes(),
               peak_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss)",
               runtime_baseline_bytes=baseline if device.type == "cpu" else None,
               rss_after_build_bytes=after_build if device.type == "cpu" else None)
    if bits is not None:
        row.update(bits=bits, train_peak_bytes=row["peak_bytes"] if device.type == "cuda" else peak_rss_since_reset())
    return row


def train_steps(args, base, adapter, dtype: torch.dtype, device: torch.device) -> dict:
    """``--warmup`` + ``--steps`` AdamW steps of ``adapter`` on ``base`` over one fixed random batch."""
    from softprompt.engine.forward import AdaptedLM

    model = AdaptedLM(base, adapter)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (args.batch_size, args.seq_len), generator=g).to(device)
    mask, labels = torch.ones_like(ids), ids.clone()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autocast:
            loss_sum, n = model(ids, mask, labels)
        (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(round(float(loss_sum) / n, 4))
    step_s = statistics.median(times)
    return {"trainable_params": sum(p.numel() for p in trainable), "step_seconds": [round(t, 3) for t in times],
            "median_step_s": round(step_s, 3), "tokens_per_second": round(args.batch_size * args.seq_len / step_s, 1),
            "last_loss": losses[-1], "losses": losses}


# ----------------------------------------------------------------------------- orchestration


def computed_full(shape: str, args) -> dict:
    """Full fine-tuning's need without running it: weights + gradients + AdamW's two moments."""
    p = n_params(shape)
    per_param = 16 if args.dtype == "fp32" else 8  # fp32: 4+4+8; bf16/fp16 weights, grads and moments: 2+2+4
    return {"shape": shape, "method": "full", "measured": False, "params": p, "trainable_params": p,
            "weights_bytes": p * DTYPES[args.dtype].itemsize, "peak_bytes": p * per_param,
            "note": f"computed, not measured: {per_param} bytes/parameter (weights, gradients, AdamW moments) "
                    f"+ activations; above --max_full_gb {args.max_full_gb:.0f} GiB"}


def run_worker(args, shape: str, method: str, argv: list[str], bits: int | None = None) -> dict:
    worker = f"{shape}:{method}" + (f":{bits}" if bits else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", worker]
    if bits:
        cmd += ["--model_folder", args.model_folder]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        oom = "OutOfMemoryError" in proc.stderr or proc.returncode in (-9, 137)
        return {"shape": shape, "method": method, "measured": False, "params": n_params(shape),
                "note": "out of memory" if oom else f"failed: {tail[:200]}"}
    return json.loads(lines[-1])


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.machine()} ({os.cpu_count()} cores)"


def gib(x: int | None) -> str:
    return "" if x is None else f"{x / GIB:.2f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    head = (f"Device: {report['device']}; batch {s['batch_size']} x {s['seq_len']} tokens, {s['dtype']}, "
            f"{s['num_virtual_tokens']} virtual tokens, LoRA rank {s['lora_rank']}, AdamW; peak = "
            f"{report['peak_kind']}; median of {s['steps']} steps after {s['warmup']} warmup.\n\n")
    rows = ["| device | shape (params) | method | trainable params | batch x seq | dtype | peak memory GiB "
            "| weights GiB | tokens/s | note |", "|---|---|---|---:|---|---|---:|---:|---:|---|"]
    for r in report["results"]:
        note = r.get("note", "")
        if r.get("runtime_baseline_bytes"):
            note = note or f"incl. {gib(r['runtime_baseline_bytes'])} GiB runtime before the model"
        tps = f"{r['tokens_per_second']:.1f}" if "tokens_per_second" in r else "-"
        rows.append(f"| {report['device_short']} | {r['shape']} ({r['params'] / 1e9:.2f}B) | {r['method']} "
                    f"| {r.get('trainable_params', 0):,} | {s['batch_size']} x {s['seq_len']} | {s['dtype']} "
                    f"| {gib(r.get('peak_bytes'))} | {gib(r.get('weights_bytes'))} | {tps} | {note} |")
    return head + "\n".join(rows) + f"\n\nReproduce: `{report['command']}`\n"


def markdown_bits(report: dict) -> str:
    s = report["settings"]
    steps = s["warmup"] + s["steps"]
    head = (f"Device: {report['device']}; {s['methods']}, batch {s['batch_size']} x {s['seq_len']} tokens, "
            f"{s['num_virtual_tokens']} virtual tokens, AdamW lr {s['learning_rate']:g} on one fixed batch, {steps} "
            f"steps (tokens/s: median of the last {s['steps']}); the same random weights in every row.\n\n")
    rows = ["| device | shape (params) | method | base | weights GiB | RSS after load GiB | peak while training GiB "
            "| tokens/s | loss step 1 | loss step " + str(steps) + " | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    names = {32: "fp32", 16: "bf16 / fp16", 8: "8-bit (LLM.int8())", 4: "4-bit (NF4)"}
    for r in report["results"]:
        losses = r.get("losses") or ["-", "-"]
        tps = f"{r['tokens_per_second']:.1f}" if "tokens_per_second" in r else "-"
        rows.append(f"| {report['device_short']} | {r['shape']} ({r['params'] / 1e9:.2f}B) | {r['method']} "
                    f"| {names.get(r.get('bits'), r.get('bits'))} | {gib(r.get('weights_bytes'))} "
                    f"| {gib(r.get('rss_after_build_bytes'))} | {gib(r.get('train_peak_bytes'))} | {tps} "
                    f"| {losses[0]} | {losses[-1]} | {r.get('note', '')} |")
    return head + "\n".join(rows) + f"\n\nReproduce: `{report['command']}`\n"


def method_rows(args, argv: list[str]):
    """One row per (shape, method), each measured in a fresh process (full: computed when too big)."""
    for shape in args.shapes.split(","):
        for method in args.methods.split(","):
            if method == "full" and computed_full(shape, args)["peak_bytes"] > args.max_full_gb * GIB:
                yield computed_full(shape, args)
                continue
            started = time.time()
            row = run_worker(args, shape, method, argv)
            yield {**row, "wall_s": round(time.time() - started, 1)}


def bits_rows(args, argv: list[str]):
    """--bits: one row per (shape, bits, method), every row loading the same saved random model."""
    with tempfile.TemporaryDirectory(dir=REPO / "output", prefix="bench_memory_") as tmp:
        for shape in args.shapes.split(","):
            args.model_folder = str(Path(tmp) / shape)
            save = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--worker", f"{shape}:save",
                                   "--model_folder", args.model_folder], capture_output=True, text=True)
            if save.returncode != 0:
                raise SystemExit(f"saving the {shape} model failed: {save.stderr.strip().splitlines()[-1:]}")
            for bits in (int(b) for b in args.bits.split(",")):
                for method in args.methods.split(","):
                    started = time.time()
                    row = run_worker(args, shape, method, argv, bits)
                    yield {**row, "bits": bits, "wall_s": round(time.time() - started, 1)}


def run_one(args) -> None:
    """Inside a worker process: measure one (shape, method[, bits]) and print its row as JSON."""
    shape, method, *bits = args.worker.split(":")
    if method == "save":
        quantized_model_folder(shape, Path(args.model_folder))
        return
    print(json.dumps(measure(args, shape, method, int(bits[0]) if bits else None)), flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return run_one(args)
    gpu = torch.cuda.is_available()
    report = {
        "device": device_name(), "device_short": device_name().split(" (")[0] if gpu else device_name(),
        "peak_kind": "torch.cuda.max_memory_allocated" if gpu else "process peak RSS",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
        "command": shlex.join([".venv/bin/python", "bench/memory.py", *argv]),
        "settings": {k: getattr(args, k) for k in ("shapes", "methods", "batch_size", "seq_len", "dtype", "steps",
                                                   "warmup", "num_virtual_tokens", "lora_rank", "threads",
                                                   "max_full_gb", "bits", "learning_rate")},
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "results": [],
    }
    (REPO / "output").mkdir(exist_ok=True)
    for row in (bits_rows if args.bits else method_rows)(args, argv):
        report["results"].append(row)
        print(f"{row['shape']:>4} {row['method']:<14} {row.get('bits', '')} peak {gib(row.get('peak_bytes')):>6} "
              f"GiB  {row.get('tokens_per_second', '-')} tokens/s  {row.get('losses', '')} {row.get('note', '')}",
              flush=True)
    report["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    if args.quick:
        out = REPO / "output" / "bench_quick"
    out.mkdir(parents=True, exist_ok=True)
    name = f"memory_{'bits_' if args.bits else ''}{'cuda' if gpu else 'cpu'}"
    text = (markdown_bits if args.bits else markdown)(report)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
