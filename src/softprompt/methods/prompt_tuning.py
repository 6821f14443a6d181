"""Prompt tuning (Lester et al., 2021): a trainable ``(L, d)`` matrix of virtual-token embeddings.

Saved exactly as PEFT's ``PROMPT_TUNING`` adapter: key ``prompt_embeddings`` and PEFT's config
fields, so ``peft.PeftModel.from_pretrained(base, folder)`` loads it.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import CheckpointError
from softprompt.config import DEFAULT_NUM_VIRTUAL_TOKENS, ArgumentError, MethodArgs
from softprompt.files import one_line
from softprompt.methods.spec import OPTIONAL_COUNT, ConfigField, MethodSpec, register, soft_input_problem

PEFT_TYPE = "PROMPT_TUNING"
STATE_KEY = "prompt_embeddings"


class PromptTuning(nn.Module):
    """The soft prompt. ``prompt_embeds()`` is ``(num_virtual_tokens, token_dim)``."""

    def __init__(self, num_virtual_tokens: int, token_dim: int, init: str = "random"):
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)  # PEFT's attribute name
        self.init = init

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.weight.shape[0]

    def prompt_embeds(self) -> torch.Tensor:
        return self.embedding.weight

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {STATE_KEY: self.embedding.weight.detach().float().cpu().contiguous()}

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        """PEFT's ``PromptTuningConfig`` fields. The init is recorded as RANDOM on PEFT's side
        (it only matters when PEFT creates a prompt, and TEXT would make PEFT fetch a tokenizer);
        softprompt records its own init in the safetensors metadata."""
        return {
            **peft_prompt_config(PEFT_TYPE, base_model_name_or_path, base, self.num_virtual_tokens,
                                 self.embedding.weight.shape[1]),
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None,
        }

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], state: dict[str, torch.Tensor], where: str,
                        **_: Any) -> PromptTuning:
        weight = saved_prompt(config, state, where)
        module = cls(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            module.embedding.weight.copy_(weight)
        return module


def peft_prompt_config(peft_type: str, base_model_name_or_path: str, base: PreTrainedModel,
                       num_virtual_tokens: int, token_dim: int) -> dict[str, Any]:
    """The fields every PEFT prompt-learning adapter_config.json has (causal LM, inference mode)."""
    cfg = base.config.get_text_config()
    return {
        "peft_type": peft_type,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": num_virtual_tokens,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_hidden_layers,
        "inference_mode": True,
        "auto_mapping": None,
        "modules_to_save": None,
        "revision": None,
    }


PROMPT_FIELDS = {
    "num_virtual_tokens": OPTIONAL_COUNT,
    "num_transformer_submodules": ConfigField((int, type(None))),
}
"""The adapter_config.json fields a prompt checkpoint's loader reads (``token_dim``: every method's)."""


def saved_prompt(config: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """The ``prompt_embeddings`` tensor (L, d) of a prompt checkpoint, checked against its config (whose
    fields :data:`PROMPT_FIELDS` have been checked)."""
    if STATE_KEY not in state:
        raise CheckpointError(f"{where}: no '{STATE_KEY}' tensor in adapter_model.safetensors")
    weight = state[STATE_KEY]
    if config.get("num_transformer_submodules") not in (None, 0, 1):
        raise CheckpointError(f"{where}: num_transformer_submodules must be 1 for a causal LM")
    n = config.get("num_virtual_tokens") or (weight.shape[0] if weight.ndim else 0)
    d = config.get("token_dim") or (weight.shape[1] if weight.ndim == 2 else 0)
    if weight.ndim != 2 or tuple(weight.shape) != (n, d) or min(weight.shape) < 1:
        raise CheckpointError(f"{where}: '{STATE_KEY}' has shape {tuple(weight.shape)}, expected ({n}, {d}) = "
                              "(num_virtual_tokens, token_dim)")
    if not weight.is_floating_point():
        raise CheckpointError(f"{where}: '{STATE_KEY}' holds {weight.dtype}, not floating-point numbers")
    return weight


def initial_prompt(
    args: MethodArgs, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase, generator: torch.Generator
) -> torch.Tensor:
    """The starting prompt, ``(L, d)``, from the vocabulary ``embeddings`` (V, d)."""
    init = args.init
    text_ids = None
    if init == "text":
        text_ids = tokenizer(args.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
        if not text_ids:
            raise ArgumentError("--prompt_tuning_init_text tokenizes to nothing; give some text")
    L = args.num_virtual_tokens or (len(text_ids) if text_ids else DEFAULT_NUM_VIRTUAL_TOKENS)
    V, d = embeddings.shape
    emb = embeddings.detach().float()
    if init == "random":  # normal, scaled to the vocabulary embeddings' statistics
        return torch.randn(L, d, generator=generator) * emb.std() + emb.mean()
    if init == "sample_vocab":
        return emb[torch.randint(0, V, (L,), generator=generator)].clone()
    if init == "text":
        ids = (text_ids * (L // len(text_ids) + 1))[:L]  # tiled or cut to length
        return emb[torch.tensor(ids)].clone()
    return _init_from_hook(init, L, emb, tokenizer)


def _init_from_hook(spec: str, L: int, emb: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The user's ``module:function`` called as fn(L, emb, tokenizer); whatever it raises (on import, a wrong
    signature, its own error) or returns that is not an (L, d) tensor is an ArgumentError naming it."""
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except Exception as exc:  # ImportError, AttributeError, and whatever the module raises as it runs
        raise ArgumentError(f"--prompt_tuning_init {spec}: cannot load it ({type(exc).__name__}: "
                            f"{one_line(exc)})") from None
    try:
        result = fn(L, emb, tokenizer)
    except Exception as exc:  # the hook's own code: a TypeError for a wrong signature, or anything it raises
        raise ArgumentError(f"--prompt_tuning_init {spec}: calling it as {fn_name}(num_virtual_tokens, "
                            f"embedding_weight, tokenizer) failed ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        out = torch.as_tensor(result, dtype=torch.float32)
    except Exception:  # torch raises TypeError, ValueError or RuntimeError for what it cannot take
        out = None
    if out is None or tuple(out.shape) != (L, emb.shape[1]):
        got = f"shape {tuple(out.shape)}" if out is not None else f"a {type(result).__name__}"
        raise ArgumentError(f"--prompt_tuning_init {spec}: returned {got}, expected ({L}, {emb.shape[1]})")
    if not torch.isfinite(out).all():
        raise ArgumentError(f"--prompt_tuning_init {spec}: returned values that are not finite (nan or inf)")
    return out


def create(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs, generator: torch.Generator
) -> PromptTuning:
    """A new soft prompt for ``base``, initialised as ``args`` says."""
    weight = initial_prompt(args, base.get_input_embeddings().weight, tokenizer, generator)
    module = PromptTuning(weight.shape[0], weight.shape[1], init=args.init)
    with torch.no_grad():
        module.embedding.weight.copy_(weight)
    return module


SPEC = register(MethodSpec(
    name="prompt_tuning", kind="prompt", build=create, peft_type=PEFT_TYPE, from_checkpoint=PromptTuning.from_checkpoint,
    arguments=("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text"),
    config_fields=PROMPT_FIELDS, check_state=saved_prompt,
    base_problem=soft_input_problem,
))
PromptTuning.method = SPEC  # a module made by the class itself knows its method too
