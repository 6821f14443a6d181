"""The report of ``bench/train_throughput.py``: its markdown table, console table, warnings and files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

METHODS = ("peft", "softprompt", "softprompt_rows")
"""PEFT's prompt tuning; softprompt with the batch's common token prefix run once; softprompt, rows whole."""


MD_HEADER = (
    "| device | model | rows | virtual tokens | batch | seq len | dtype | shared tokens per batch | PEFT tokens/s "
    "| softprompt, rows whole, tokens/s | softprompt, shared prefix, tokens/s | speedup rows whole | speedup shared "
    "prefix | loss / grad rel. diff vs PEFT |\n|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
)


def data_stats(measured: list[dict]) -> dict:
    masks = [b["attention_mask"] for b in measured]
    rows = sum(m.shape[0] for m in masks)
    return {
        "measured_batches": len(measured),
        "rows_per_repeat": rows,
        "mean_real_tokens_per_row": sum(int(m.sum()) for m in masks) / rows,
        "mean_padded_width": sum(m.shape[1] for m in masks) / len(masks),
        "labelled_tokens_per_repeat": sum(int((b["labels"][:, 1:] != -100).sum()) for b in measured),
    }


def noise_warnings(report: dict) -> list[str]:
    """Signs that other work competed with the benchmark: a high load average, a wide ratio spread."""
    env, out = report["environment"], []
    load, threads = env.get("loadavg_1m_at_end"), env["torch_threads"]
    if env["device_type"] == "cpu" and load is not None and load > threads + 0.75:
        out.append(f"1-minute load average {load} at the end, above the benchmark's {threads} thread(s): other "
                   "processes competed for the CPU, so the numbers are low and noisy; rerun on a quiet machine")
    for r in report["results"]:
        lo, hi = r["per_repeat_speedup_min"], r["per_repeat_speedup_max"]
        if hi > 1.15 * lo:
            out.append(f"{r['rows']} rows, {r['num_virtual_tokens']} virtual tokens: per-repeat speedups range "
                       f"{lo:.2f}-{hi:.2f}, so the machine was noisy during this setting")
    return out


def md_row(report: dict, r: dict) -> str:
    s = report["settings"]
    med, shared = r["median_tokens_per_s"], r["shared_tokens_per_batch"]
    rows = min(r["per_repeat_speedup_rows"]), max(r["per_repeat_speedup_rows"])
    worst = max((r["parity"][m] for m in METHODS[1:]), key=lambda d: d["grad_norm_rel_diff"])
    worst_loss = max(r["parity"][m]["loss_rel_diff"] for m in METHODS[1:])
    return (f"| {report['environment']['device']} | {s['model']} | {r['rows']} | {r['num_virtual_tokens']} "
            f"| {s['batch_size']} | {report['data'][r['rows']]['cut_at']} | {s['dtype']} | {min(shared)}-{max(shared)} | {med['peft']:.1f} "
            f"| {med['softprompt_rows']:.1f} | {med['softprompt']:.1f} "
            f"| {r['speedup_rows']:.2f}x ({rows[0]:.2f}–{rows[1]:.2f}) "
            f"| {r['speedup']:.2f}x ({r['per_repeat_speedup_min']:.2f}–{r['per_repeat_speedup_max']:.2f}) "
            f"| {worst_loss:.1e} / {worst['grad_norm_rel_diff']:.1e} |")


def markdown(report: dict) -> str:
    s = report["settings"]
    data = "; ".join(f"{name}: {d['source']} cut at {d['cut_at']} tokens, {d['mean_real_tokens_per_row']:.1f} real "
                     f"tokens per row"
                     for name, d in report["data"].items())
    lines = [
        "# Training throughput: softprompt vs PEFT prompt tuning", "",
        f"Real tokens/s (sum of attention_mask; virtual tokens not counted), median of {s['repeats']} interleaved "
        f"repeats of {s['steps']} steps (forward + backward + AdamW on the prompt) after {s['warmup']} warmup step(s). "
        f"Speedup = ratio of the medians over PEFT (min–max of the per-repeat ratios). softprompt runs with its "
        f"shared prefix (the batch's common leading tokens once per batch) and with rows whole. Data: {data}. "
        f"Loss / gradient difference: relative, worst softprompt variant vs PEFT, gradient by norm. "
        f"{report['timestamp']}.", "",
        MD_HEADER, *(md_row(report, r) for r in report["results"]), "",
        "Reproduce:", "", "```sh", report["command"], "```", "",
        *(f"**Warning:** {w}\n" for w in report["warnings"]),
    ]
    for r in (r for r in report["results"] if r["memory"]):
        lines.append(f"Peak CUDA memory of one step above the resident weights, {r['rows']} rows, "
                     f"{r['num_virtual_tokens']} virtual tokens: " + ", ".join(
                         f"{m} {v['step_bytes'] / 2**20:.0f} MiB" for m, v in r["memory"].items()) + ".")
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"\n{report['environment']['device']} | {s['model']} | batch {s['batch_size']} | seq len {s['seq_len']} | "
          f"{s['dtype']} | {report['environment']['torch_threads']} threads | {report['wall_seconds']:.0f} s in all")
    print(f"{'rows':>6} {'virtual':>7} {'shared':>7} {'PEFT':>8} {'rows whole':>11} {'shared pfx':>11} "
          f"{'speedup':>8} {'(rows)':>7} {'loss rel diff':>14}")
    for r in report["results"]:
        med = r["median_tokens_per_s"]
        diff = max(r["parity"][m]["loss_rel_diff"] for m in METHODS[1:])
        print(f"{r['rows']:>6} {r['num_virtual_tokens']:>7} {statistics.mean(r['shared_tokens_per_batch']):>7.1f} "
              f"{med['peft']:>8.1f} {med['softprompt_rows']:>11.1f} {med['softprompt']:>11.1f} "
              f"{r['speedup']:>7.2f}x {r['speedup_rows']:>6.2f}x {diff:>14.1e}")


def print_warnings(report: dict) -> None:
    for w in report["warnings"]:
        print(f"WARNING: {w}")


def write_outputs(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("train_throughput.json", json.dumps(report, indent=2) + "\n"),
                       ("train_throughput.md", markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print(f"wrote {out / 'train_throughput.json'} and {out / 'train_throughput.md'}")


