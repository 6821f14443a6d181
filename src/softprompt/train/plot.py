"""The loss plot written after training (training loss, smoothed, and validation loss)."""

from __future__ import annotations

import math
from pathlib import Path

from softprompt.report import pyplot


def smooth(values: list[float]) -> list[float]:
    """Exponential moving average, bias-corrected; heavier for longer curves (LLaMA-Factory's rule)."""
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], 0.0
    for i, v in enumerate(values, 1):
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight**i))
    return out


def plot_loss(history: list[dict], path: str | Path) -> Path | None:
    """Plot ``loss`` and ``eval_loss`` rows of a trainer log against ``current_steps``."""
    train = [(r["current_steps"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["current_steps"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if not train and not evals:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#1f77b4", alpha=0.35, label="training loss")
        ax.plot(steps, smooth(list(losses)), color="#1f77b4", label="training loss (smoothed)")
    if evals:
        steps, losses = zip(*evals)
        ax.plot(steps, losses, "o-", color="#d62728", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per labelled token")
    ax.set_title(f"training loss — {Path(path).parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
