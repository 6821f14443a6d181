"""Full fine-tuning: every weight of the model trains, and the result is a whole model folder.

Nothing is prepended; the base model itself is the trainable part. The output is what
``save_pretrained`` writes (config, safetensors weights, generation config) plus the tokenizer,
so ``transformers.AutoModelForCausalLM.from_pretrained(output_dir)`` and
``softprompt chat --model_name_or_path output_dir`` load it. ``freeze`` (only some layers
train) saves the same way, through :class:`WeightTuning`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.files import atomic_folder
from softprompt.config import MethodArgs
from softprompt.methods.spec import MethodSpec, Recipe, register


class WeightTuning(nn.Module):
    """Handle on the base model's own weights that train (``requires_grad``).

    ``adapter_state()`` is those weights by their names in ``base.state_dict()``; saving writes the
    whole model, since what changed is part of it.
    """

    def __init__(self, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: str):
        super().__init__()
        object.__setattr__(self, "base", base)  # not registered: the training loop owns the base
        object.__setattr__(self, "tokenizer", tokenizer)
        self.init = method

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.base.named_parameters() if p.requires_grad}

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        return {"finetuning_type": self.init, "base_model_name_or_path": base_model_name_or_path}

    def save_model_folder(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the model (with ``state``, an earlier copy of the trained weights, put back first)
        and its tokenizer to ``folder``, atomically."""
        if state is not None:
            with torch.no_grad():
                params = dict(self.base.named_parameters())
                for name, value in state.items():
                    params[name].copy_(value)

        def write(tmp: Path) -> None:
            self.base.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        return atomic_folder(folder, write, existing="merge")  # output_dir keeps its logs


def create(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs,
           generator: torch.Generator) -> WeightTuning:
    """Every parameter of ``base`` trains."""
    base.requires_grad_(True)
    return WeightTuning(base, tokenizer, "full")


SPEC = register(MethodSpec(name="full", kind="weights", build=create,
                           recipe=Recipe(learning_rate=2e-5, lr_scheduler_type="cosine")))
