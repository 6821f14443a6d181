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

from softprompt.files import atomic_write
from softprompt.config import ArgumentError
from softprompt.methods import REGISTRY, read_adapter

TENSOR_NAME = "prompt_embeds"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def prompt_embeddings(adapter_dir: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """The prompt's input embeddings ``(L, d)`` (fp32) and the adapter's facts (method, base, sizes)."""
    files = read_adapter(adapter_dir)
    spec, peft_type, config = files.spec, files.peft_type, files.config
    if spec.kind == "prefix":
        raise ArgumentError(f"{adapter_dir} is a {spec.name} adapter: it trains each layer's keys and values, "
                            "not input embeddings, so it has no prompt_embeds to export")
    if not spec.exportable:
        names = " and ".join(s.name for s in REGISTRY.values() if s.exportable)
        raise ArgumentError(f"{adapter_dir} is a {peft_type} adapter: only {names} prompts are input embeddings")
    adapter = spec.load(config, files.state, files.path)
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
        atomic_write(output, lambda p: torch.save(embeds, p))
    elif output.suffix == ".safetensors":
        atomic_write(output, lambda p: save_file({TENSOR_NAME: embeds}, p, metadata={"format": "pt", **facts}))
    else:
        raise ArgumentError(f"--output {output}: name a .safetensors or a .pt file")
    return output
