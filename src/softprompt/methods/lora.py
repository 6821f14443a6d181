"""LoRA (Hu et al., 2021) through the ``peft`` package: a trainable low-rank update ``B @ A`` beside
each chosen linear layer of the frozen model.

There is no prefix: the LoRA layers live inside the base model (``peft`` injects them in place),
so the engine runs the base as it is. Saved exactly as ``PeftModel.save_pretrained`` saves it
(``peft``'s own state-dict and config helpers), so PEFT loads it and softprompt loads PEFT's.
Arguments are LLaMA-Factory's: ``lora_rank``, ``lora_alpha`` (default ``2 * lora_rank``),
``lora_dropout``, ``lora_target`` (``all`` = every linear layer but the LM head),
``additional_target`` (PEFT's ``modules_to_save``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import CheckpointError
from softprompt.config import ArgumentError, MethodArgs
from softprompt.files import one_line
from softprompt.methods.spec import OPTIONAL_COUNT, ConfigField, MethodSpec, Recipe, register

PEFT_TYPE = "LORA"


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


class Lora(nn.Module):
    """Handle on the LoRA layers ``peft`` put into the base model.

    The layers are the base's submodules (trainable: ``requires_grad``), not this module's, so
    the base keeps a single owner; ``adapter_state()`` collects them with PEFT's key names.
    """

    def __init__(self, peft_model: PeftModel):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not registered: the base owns the layers
        self.init = "lora"

    def adapter_state(self) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(self.peft_model)
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        """``LoraConfig`` as PEFT writes it (sets as lists, enums as their values), inference mode."""
        config = self.peft_model.peft_config["default"]
        out = {}
        for key, value in config.to_dict().items():
            if isinstance(value, set):
                value = sorted(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[key] = value
        out.update(base_model_name_or_path=base_model_name_or_path, inference_mode=True)
        return out

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], state: dict[str, torch.Tensor], where: str,
                        base: PreTrainedModel | None = None, trainable: bool = False) -> Lora:
        """Put a saved LoRA adapter into ``base`` (in place) and load its weights."""
        if base is None:
            raise CheckpointError(f"{where}: a LoRA adapter needs its base model to load into")
        fields = {f.name for f in dataclasses.fields(LoraConfig)}
        skip = ("peft_type", "auto_mapping", "base_model_name_or_path")  # peft names the base it is given
        kwargs = {k: v for k, v in config.items() if k in fields and k not in skip}
        try:
            lora_config = LoraConfig(**{**kwargs, "inference_mode": not trainable})
            peft_model = get_peft_model(base, lora_config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: adapter_config.json does not fit this base model ({exc})") from None
        try:
            result = set_peft_model_state_dict(peft_model, state)
        except RuntimeError as exc:  # a tensor of another shape than the layer it belongs to
            raise CheckpointError(f"{where}: adapter_model.safetensors does not fit its config and this base "
                                  f"model ({one_line(exc)})") from None
        lora_keys = [k for k in result.missing_keys if "lora_" in k]
        if lora_keys or result.unexpected_keys:
            bad = (lora_keys or result.unexpected_keys)[0]
            raise CheckpointError(f"{where}: adapter_model.safetensors does not match its config "
                                  f"({'missing' if lora_keys else 'unexpected'} tensor {bad!r})")
        if not trainable:
            base.requires_grad_(False)
        return cls(peft_model)


def lora_config(base: PreTrainedModel, args: MethodArgs) -> LoraConfig:
    """PEFT's ``LoraConfig`` from LLaMA-Factory's argument names."""
    targets = args.lora_target.strip()
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_rank,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear" if targets == "all" else _names(targets),
        modules_to_save=_names(args.additional_target),
        use_rslora=args.use_rslora,
        use_dora=args.use_dora,
    )


def create(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs,
           generator: torch.Generator) -> Lora:
    """New LoRA layers in ``base`` (A random, B zero: the model starts unchanged). ``peft`` draws
    A from torch's global generator, which the training loop seeds with ``--seed``."""
    try:
        peft_model = get_peft_model(base, lora_config(base, args))
    except ValueError as exc:  # e.g. a --lora_target that names no module of this model
        raise ArgumentError(f"--lora_target {args.lora_target}: {str(exc).splitlines()[0]}") from None
    return Lora(peft_model)


_OPTIONAL_NAMES = ConfigField((str, list, type(None)))
CONFIG_FIELDS = {
    "r": OPTIONAL_COUNT, "lora_alpha": ConfigField((float, type(None)), 0.0),
    "lora_dropout": ConfigField((float, type(None)), 0.0, 1.0), "use_rslora": ConfigField((bool, type(None))),
    "use_dora": ConfigField((bool, type(None))), "target_modules": _OPTIONAL_NAMES, "modules_to_save": _OPTIONAL_NAMES,
    "rank_pattern": ConfigField((dict, type(None))), "alpha_pattern": ConfigField((dict, type(None))),
}
"""The adapter_config.json fields that size and scale the LoRA layers (peft's LoraConfig checks the rest)."""


def check_saved(config: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> None:
    """Every ``lora_A`` tensor is (r, in) and every ``lora_B`` (out, r), for the config's ``r``, checked before
    peft allocates the layers (per-module ranks, ``rank_pattern``, are checked by peft as it loads them)."""
    if config.get("rank_pattern"):
        return
    r = config.get("r") or LoraConfig.r
    for key, tensor in state.items():
        dim = 0 if "lora_A" in key or "lora_embedding_A" in key else None
        dim = 1 if "lora_B" in key or "lora_embedding_B" in key else dim
        if dim is not None and (tensor.ndim < 2 or tensor.shape[dim] != r):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(tensor.shape)}, which does not fit "
                                  f"adapter_config.json's r = {r}")


SPEC = register(MethodSpec(
    name="lora", kind="weights", build=create, peft_type=PEFT_TYPE, from_checkpoint=Lora.from_checkpoint,
    arguments=("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "additional_target", "use_rslora", "use_dora"),
    config_fields=CONFIG_FIELDS, check_state=check_saved,
    recipe=Recipe(learning_rate=2e-4, lr_scheduler_type="cosine"),
))
Lora.method = SPEC  # a module made by the class itself knows its method too
