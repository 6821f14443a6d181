"""``softprompt export``: a trained soft prompt as a plain tensor file, for engines that take prompt embeddings.

The file holds the prompt's virtual-token embeddings ``(L, d)``, to be put in front of the
embeddings of the text's tokens (vLLM's ``prompt_embeds`` input, ``inputs_embeds`` in
transformers): ``.safetensors`` with one tensor ``prompt_embeds`` (and the adapter's facts as
metadata), or ``.pt``, the tensor itself for ``torch.load``.

- ``prompt_tuning``: the trained embedding matrix.
- ``p_tuning``: the *encoded* prompt (what the encoder outputs; PEFT saves exactly that).
- ``prefix_tuning`` cannot be exported this way: it trains per-layer keys and values, which no
  sequence of input embeddings reproduces.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from softprompt.checkpoint import _atomic_write, load_adapter
from softprompt.config import ArgumentError
from softprompt.methods import adapter_from_checkpoint

TENSOR_NAME = "prompt_embeds"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXPORTABLE = ("PROMPT_TUNING", "P_TUNING")


def prompt_embeddings(adapter_dir: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """The prompt's input embeddings ``(L, d)`` (fp32) and the adapter's facts (method, base, sizes)."""
    config, state, _ = load_adapter(adapter_dir)
    peft_type = str(config.get("peft_type"))
    if peft_type == "PREFIX_TUNING":
        raise ArgumentError(f"{adapter_dir} is a prefix_tuning adapter: it trains each layer's keys and values, "
                            "not input embeddings, so it has no prompt_embeds to export")
    if peft_type not in EXPORTABLE:
        raise ArgumentError(f"{adapter_dir} is a {peft_type} adapter: only prompt_tuning and p_tuning prompts "
                            "are input embeddings")
    adapter = adapter_from_checkpoint(config, state, str(adapter_dir))
    with torch.no_grad():
        embeds = adapter.prompt_embeds().detach().float().cpu().contiguous()  # (L, d)
    facts = {"peft_type": peft_type, "base_model_name_or_path": str(config.get("base_model_name_or_path") or ""),
             "num_virtual_tokens": str(embeds.shape[0]), "token_dim": str(embeds.shape[1])}
    return embeds, facts


def export_embeddings(adapter_dir: str | Path, output: str | Path, dtype: str = "fp32") -> Path:
    """Write the prompt of ``adapter_dir`` to ``output`` (.safetensors or .pt), atomically; returns the path."""
    output = Path(output)
    embeds, facts = prompt_embeddings(adapter_dir)
    embeds = embeds.to(DTYPES[dtype])
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".pt":
        _atomic_write(output, lambda p: torch.save(embeds, p))
    elif output.suffix == ".safetensors":
        _atomic_write(output, lambda p: save_file({TENSOR_NAME: embeds}, p, metadata={"format": "pt", **facts}))
    else:
        raise ArgumentError(f"--output {output}: name a .safetensors or a .pt file")
    return output
