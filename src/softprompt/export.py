"""``softprompt export``: a trained soft prompt as a plain tensor, for engines that take prompt embeddings.

The tensor holds the prompt's virtual-token embeddings ``(L, d)``, to be put in front of the
embeddings of the text's tokens (vLLM's ``prompt_embeds`` input, ``inputs_embeds`` in
transformers).

- ``--format embeddings``: one file, ``.safetensors`` with one tensor ``prompt_embeds`` (and the
  adapter's facts as metadata), or ``.pt``, the tensor itself for ``torch.load``.
- ``--format vllm``: a folder for ``vllm serve --enable-prompt-embeds``: ``prompt_embeds.pt`` (the
  tensor in the base model's dtype, as ``torch.save`` writes it: what vLLM's ``prompt_embeds`` field
  carries, base64-encoded) and ``softprompt_vllm.json`` (base model and the folder vLLM loads,
  length, width, dtype, the serve command and the client recipe; ``examples/vllm_client.py`` reads it).

- ``prompt_tuning``: the trained embedding matrix.
- ``p_tuning``: the *encoded* prompt (what the encoder outputs; PEFT saves exactly that).
- ``prefix_tuning`` cannot be exported this way: it trains per-layer keys and values, which no
  sequence of input embeddings reproduces.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, PretrainedConfig

from softprompt.files import atomic_write, atomic_write_text, one_line
from softprompt.config import ArgumentError
from softprompt.methods import REGISTRY, read_adapter
from softprompt.model import ModelNotFoundError, convert_gguf, resolve_source

TENSOR_NAME = "prompt_embeds"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VLLM_TENSOR = "prompt_embeds.pt"
"""The tensor file of ``--format vllm``: ``torch.save`` of the ``(L, d)`` prompt in the base's dtype."""
VLLM_INFO = "softprompt_vllm.json"
"""The facts file of ``--format vllm``."""
VLLM_FORMAT = "softprompt-vllm-prompt-embeds/1"
"""``format`` in :data:`VLLM_INFO`: marks the folder's two files as softprompt's (it rewrites only those)."""
VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
"""torch dtype -> the name ``vllm serve --dtype`` takes."""
RECIPE = [
    "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True): the base's own tokenizer and "
    "chat template (model_folder), exactly the token ids softprompt's chat/serve would use",
    "embeds = torch.cat([prompt_embeds, embedding_table[ids]]).to(dtype): (num_virtual_tokens + len(ids), "
    "hidden_size), the soft prompt first, as softprompt puts it",
    "POST /v1/completions {model: model_folder, prompt: '', prompt_embeds: base64(torch.save(embeds))} to "
    "`vllm serve model_folder --enable-prompt-embeds`; the openai client sends it as "
    "extra_body={'prompt_embeds': ...}",
]
"""The client's steps, written into :data:`VLLM_INFO` (``examples/vllm_client.py`` does them)."""


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
    """Write the prompt of ``adapter_dir`` to ``output`` (.safetensors or .pt), atomically; returns the path.
    ``dtype`` 'auto' is fp32."""
    output = Path(output)
    embeds, facts = prompt_embeddings(adapter_dir)
    embeds = embeds.to(DTYPES.get(dtype, torch.float32))
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".pt":
        atomic_write(output, lambda p: torch.save(embeds, p))
    elif output.suffix == ".safetensors":
        atomic_write(output, lambda p: save_file({TENSOR_NAME: embeds}, p, metadata={"format": "pt", **facts}))
    else:
        raise ArgumentError(f"--output {output}: name a .safetensors or a .pt file")
    return output


def base_config(name_or_path: str) -> tuple[str, PretrainedConfig]:
    """The model folder (or hub id) an engine loads for ``name_or_path``, and its config: a GGUF file or
    the default alias is converted once to its cached Hugging Face folder, as every command does."""
    path, gguf = resolve_source(name_or_path)
    folder = str(convert_gguf(gguf)) if gguf is not None else path
    if Path(folder).is_dir():
        folder = str(Path(folder).resolve())
    try:
        return folder, AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{name_or_path}: cannot read its config.json ({one_line(exc, 200)})") from None


def config_dtype(config: PretrainedConfig) -> torch.dtype:
    """The dtype the base's weights are stored in (its config's ``dtype``; fp32 when it names none or another)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if value in VLLM_DTYPES else torch.float32


def _check_vllm_folder(folder: Path) -> None:
    """Refuse a file, and a folder whose prompt_embeds.pt / softprompt_vllm.json softprompt did not write."""
    if folder.exists() and not folder.is_dir():
        raise ArgumentError(f"--output {folder}: is a file; --format vllm writes a folder")
    info = folder / VLLM_INFO
    ours = False
    if info.is_file():
        try:
            ours = json.loads(info.read_text(encoding="utf-8")).get("format") == VLLM_FORMAT
        except (ValueError, UnicodeDecodeError, AttributeError):
            ours = False
    for name in (VLLM_TENSOR, VLLM_INFO):
        if (folder / name).exists() and not ours:
            raise ArgumentError(f"--output {folder}: holds a {name} softprompt did not write; name another folder")


def export_vllm(adapter_dir: str | Path, output: str | Path, dtype: str = "auto",
                model_name_or_path: str | None = None) -> Path:
    """Write ``output``/prompt_embeds.pt (the ``(L, d)`` prompt in the base's dtype, or ``dtype``) and
    ``output``/softprompt_vllm.json for ``vllm serve --enable-prompt-embeds``; returns the folder."""
    embeds, facts = prompt_embeddings(adapter_dir)
    base = model_name_or_path or facts["base_model_name_or_path"]
    if not base:
        raise ArgumentError(f"{adapter_dir}: adapter_config.json names no base model; give --model_name_or_path")
    try:
        folder, config = base_config(base)
    except ModelNotFoundError as exc:
        if model_name_or_path:
            raise
        raise ModelNotFoundError(f"{adapter_dir}: its base_model_name_or_path: {exc}; give the base with "
                                 "--model_name_or_path") from None
    hidden = config.get_text_config().hidden_size
    if embeds.shape[1] != hidden:
        raise ArgumentError(f"{adapter_dir}: the prompt is {embeds.shape[1]} wide but {base} has hidden_size "
                            f"{hidden}; give the base it was trained on (--model_name_or_path)")
    torch_dtype = DTYPES[dtype] if dtype in DTYPES else config_dtype(config)
    output = Path(output)
    _check_vllm_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    tensor = embeds.to(torch_dtype).clone()  # (L, d), its own storage: torch.save writes just this
    atomic_write(output / VLLM_TENSOR, lambda p: torch.save(tensor, p))
    name = VLLM_DTYPES[torch_dtype]
    info = {"format": VLLM_FORMAT, "adapter": str(Path(adapter_dir).resolve()), "peft_type": facts["peft_type"],
            "model": base, "model_folder": folder, "num_virtual_tokens": tensor.shape[0], "hidden_size": hidden,
            "dtype": name, "prompt_embeds": VLLM_TENSOR,
            "serve": f"vllm serve {shlex.quote(folder)} --enable-prompt-embeds --dtype {name}", "recipe": RECIPE,
            "client": f"python examples/vllm_client.py --export {shlex.quote(str(output))} --query 'Your question'"}
    atomic_write_text(output / VLLM_INFO, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return output
