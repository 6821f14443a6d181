"""``softprompt inspect``: what a trained soft prompt holds.

Sizes and where it came from (from the adapter files alone), then, against the base model's
input embeddings, each virtual token's nearest vocabulary tokens by cosine similarity (Lester
et al.'s way of reading a prompt) and its norm placed in the vocabulary's norm distribution:
a token whose norm is more than ``FAR_Z`` standard deviations from the vocabulary's mean sits
far off the embedding manifold, where no real token lives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from softprompt.checkpoint import WEIGHTS_NAME
from softprompt.methods import read_adapter
from softprompt.model import LoadedModel

FAR_Z = 3.0
"""|z-score| of a virtual token's norm above which it is flagged as off the embedding manifold."""


def describe_adapter(adapter_dir: str) -> dict[str, Any]:
    """Method, length, dimensions, parameters, bytes, base model and init, from the files alone."""
    files = read_adapter(adapter_dir)
    config, state, meta = files.config, files.state, files.metadata
    weights = Path(adapter_dir) / WEIGHTS_NAME
    prompt = state.get("prompt_embeddings")
    return {
        "adapter": str(adapter_dir),
        "method": config.get("peft_type"),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "init": meta.get("softprompt_init") or config.get("prompt_tuning_init"),
        "num_virtual_tokens": int(prompt.shape[0]) if prompt is not None else config.get("num_virtual_tokens"),
        "token_dim": int(prompt.shape[1]) if prompt is not None else config.get("token_dim"),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes_on_disk": weights.stat().st_size if weights.is_file() else None,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                    for k, v in state.items()},
    }


def nearest_tokens(prompt: torch.Tensor, vocab: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each virtual token (L, d) to each vocabulary row (V, d): the top_k
    (values, ids), each (L, top_k)."""
    p = torch.nn.functional.normalize(prompt.float(), dim=-1)  # (L, d)
    v = torch.nn.functional.normalize(vocab.float(), dim=-1)  # (V, d)
    return (p @ v.T).topk(top_k, dim=-1)  # (L, V) -> (L, top_k)


def norm_stats(prompt: torch.Tensor, vocab: torch.Tensor) -> dict[str, Any]:
    """Each virtual token's L2 norm, its z-score and percentile among the vocabulary's norms."""
    vn = vocab.float().norm(dim=-1)  # (V,)
    pn = prompt.float().norm(dim=-1)  # (L,)
    mean, std = float(vn.mean()), float(vn.std())
    z = (pn - mean) / max(std, 1e-12)  # (L,)
    pct = 100 * (vn[None, :] < pn[:, None]).float().mean(-1)  # (L,)
    return {"vocab_norm_mean": mean, "vocab_norm_std": std, "norm": pn.tolist(), "z": z.tolist(), "pct": pct.tolist()}


def inspect_adapter(adapter_dir: str, lm: LoadedModel, top_k: int = 5) -> dict[str, Any]:
    """:func:`describe_adapter` plus, per virtual token, its nearest tokens and norm statistics."""
    info = describe_adapter(adapter_dir)
    info["base_model_used"] = lm.name
    state = read_adapter(adapter_dir).state
    prompt = state.get("prompt_embeddings")
    vocab = lm.model.get_input_embeddings().weight.detach()  # (V, d)
    if prompt is None or prompt.shape[1] != vocab.shape[1]:
        info["virtual_tokens"] = []
        return info
    sims, ids = nearest_tokens(prompt, vocab, min(top_k, vocab.shape[0]))
    stats = norm_stats(prompt, vocab)
    info.update(vocab_size=int(vocab.shape[0]), vocab_norm_mean=stats["vocab_norm_mean"],
                vocab_norm_std=stats["vocab_norm_std"])
    tok = lm.tokenizer
    info["virtual_tokens"] = [{
        "index": i, "norm": stats["norm"][i], "norm_z": stats["z"][i], "norm_percentile": stats["pct"][i],
        "off_manifold": abs(stats["z"][i]) > FAR_Z,
        "nearest": [{"token": tok.decode([int(t)]), "id": int(t), "cosine": float(c)} for t, c in zip(ids[i], sims[i])],
    } for i in range(prompt.shape[0])]
    return info


def format_report(info: dict[str, Any]) -> str:
    """The human-readable report: a header, then one line per virtual token."""
    size = f"{info['bytes_on_disk']:,} bytes on disk" if info["bytes_on_disk"] is not None else "no safetensors file"
    lines = [
        f"adapter     {info['adapter']}",
        f"method      {info['method']} (init: {info['init'] or 'unknown'})",
        f"base model  {info['base_model_name_or_path']} (inspected against {info['base_model_used']})",
        f"size        {info['num_virtual_tokens']} virtual tokens x {info['token_dim']} dims = "
        f"{info['parameters']:,} parameters; {size}",
    ]
    rows = info["virtual_tokens"]
    if not rows:
        return "\n".join(lines + ["(no prompt embeddings matching the base model's width to compare)"]) + "\n"
    lines.append(f"vocabulary  {info['vocab_size']:,} tokens, embedding norm {info['vocab_norm_mean']:.3f} "
                 f"+- {info['vocab_norm_std']:.3f}; '!' marks |z| > {FAR_Z:g} (off the embedding manifold)")
    lines.append("")
    lines.append("   #    norm      z   pct   nearest vocabulary tokens (cosine)")
    for r in rows:
        near = "  ".join(f"{json.dumps(n['token'], ensure_ascii=False)} {n['cosine']:.2f}" for n in r["nearest"])
        flag = "!" if r["off_manifold"] else " "
        lines.append(f"{r['index']:>4} {r['norm']:7.3f} {r['norm_z']:6.1f} {r['norm_percentile']:5.1f}{flag}  {near}")
    far = sum(r["off_manifold"] for r in rows)
    lines.append("")
    lines.append(f"{far} of {len(rows)} virtual tokens are off the embedding manifold (|z| > {FAR_Z:g})")
    return "\n".join(lines) + "\n"
