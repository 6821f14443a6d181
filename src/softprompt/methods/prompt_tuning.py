"""Prompt tuning (Lester et al., 2021): a trainable ``(L, d)`` matrix of virtual-token embeddings.

Saved exactly as PEFT's ``PROMPT_TUNING`` adapter: key ``prompt_embeddings`` and PEFT's config
fields, so ``peft.PeftModel.from_pretrained(base, folder)`` loads it.

With ``--prompt_tuning_reparam residual`` (Razdaibiedina et al., 2023, "Residual Prompt Tuning") the
trained parameters are a raw prompt ``P`` (L, d) and one bottleneck MLP shared by its tokens; the
prompt the model sees, and the one saved, is ``P + LayerNorm(up(ReLU(down(P))))``. The adapter is
then an ordinary PROMPT_TUNING one (the MLP is dropped, as the paper does after training); the raw
``P`` and the MLP live on in a checkpoint's ``trainable_state.pt``, from which a run resumes.
Where the prompt starts (``--prompt_tuning_init``) is :mod:`.prompt_init`'s business.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import CheckpointError
from softprompt.config import MethodArgs
from softprompt.methods.prompt_init import initial_prompt
from softprompt.methods.spec import (
    OPTIONAL_COUNT, ConfigField, MethodSpec, Recipe, TaskData, register, soft_input_problem,
)

PEFT_TYPE = "PROMPT_TUNING"
STATE_KEY = "prompt_embeddings"


class ResidualReparam(nn.Module):
    """Residual Prompt Tuning's reparameterisation, one MLP shared by every virtual token:
    ``P' = P + LayerNorm(up(ReLU(down(P))))``, (L, d) -> (L, d), as the paper (down-projection, ReLU,
    up-projection, LayerNorm, skip connection).

    One change from the paper: the LayerNorm's gain starts at 0, so ``P' = P`` at the start and the
    initialisation (a text, the label words) is kept. With the paper's gain of 1 the branch starts as a
    unit-variance vector per token, norm sqrt(d) = 24 for SmolLM2-135M, whose token embeddings have a norm
    of about 3.2 (T5, the paper's model, has far larger embeddings): it would drown the initialisation.
    """

    def __init__(self, token_dim: int, hidden_size: int):
        super().__init__()
        self.down = nn.Linear(token_dim, hidden_size)
        self.up = nn.Linear(hidden_size, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        nn.init.zeros_(self.norm.weight)

    @property
    def hidden_size(self) -> int:
        return self.down.out_features

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        """``prompt`` (L, d) -> the reparameterised prompt (L, d)."""
        return prompt + self.norm(self.up(torch.relu(self.down(prompt))))  # (L, hidden) inside


class PromptTuning(nn.Module):
    """The soft prompt. ``prompt_embeds()`` is ``(num_virtual_tokens, token_dim)``: the trained embedding, or,
    once :func:`carry_on` gave it one, the embedding through a :class:`ResidualReparam`."""

    def __init__(self, num_virtual_tokens: int, token_dim: int, init: str = "random"):
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)  # PEFT's attribute name
        self.reparam: ResidualReparam | None = None
        self.init = init

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.weight.shape[0]

    def prompt_embeds(self) -> torch.Tensor:
        if self.reparam is None:
            return self.embedding.weight
        return self.reparam(self.embedding.weight)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """PEFT's ``prompt_embeddings``: the prompt the model sees (reparameterised, when it is)."""
        with torch.no_grad():
            return {STATE_KEY: self.prompt_embeds().detach().float().cpu().contiguous()}

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


def create(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs, generator: torch.Generator,
           data: TaskData | None = None) -> PromptTuning:
    """A new soft prompt for ``base``, initialised as ``args`` say (``data``: the training rows, for the label
    words and the instruction); with --prompt_tuning_reparam residual, its MLP seeded by ``generator`` too."""
    weight = initial_prompt(args, base.get_input_embeddings().weight, tokenizer, generator, data)
    module = PromptTuning(weight.shape[0], weight.shape[1], init=args.init)
    with torch.no_grad():
        module.embedding.weight.copy_(weight)
    carry_on(module, args, generator)
    return module


def carry_on(module: PromptTuning, args: MethodArgs, generator: torch.Generator) -> None:
    """With --prompt_tuning_reparam residual, give ``module`` a new MLP (torch's default init, from a seed of
    ``generator``; ``P' = P`` until the first update): a new prompt, or a saved one trained on."""
    if args.prompt_tuning_reparam != "residual" or module.reparam is not None:
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.reparam = ResidualReparam(module.embedding.weight.shape[1], args.reparam_hidden_size)
    module.reparam.to(module.embedding.weight.device)


SPEC = register(MethodSpec(
    name="prompt_tuning", kind="prompt", build=create, peft_type=PEFT_TYPE, from_checkpoint=PromptTuning.from_checkpoint,
    arguments=("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text", "label_words",
               "prompt_tuning_reparam", "reparam_hidden_size"),
    config_fields=PROMPT_FIELDS, check_state=saved_prompt, base_problem=soft_input_problem, reads_data=True,
    carry_on=carry_on,
    recipe=Recipe(learning_rate=3e-2, lr_scheduler_type="constant"),
))
PromptTuning.method = SPEC  # a module made by the class itself knows its method too
