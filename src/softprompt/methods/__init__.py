"""Training methods, one file each, registered in ``METHODS`` by their ``finetuning_type``.

A method's module is an ``nn.Module`` holding only the trainable parameters; it satisfies
:class:`Adapter`. Prompt methods expose ``prompt_embeds()`` (prompt_tuning, p_tuning), which the
engine turns into a prefix KV, or ``prefix_kv()`` (prefix_tuning), which is one. Weight methods
(lora, freeze, full) change the base model itself (``MODIFIES_BASE``) and add no prefix; freeze and
full save a whole model folder (``writes_model_folder``). Arguments a method does not read are
ignored with a warning by ``MethodArgs`` (its ``USED_BY`` table).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from softprompt.checkpoint import CheckpointError
from softprompt.methods import freeze, full, lora, p_tuning, prefix_tuning, prompt_tuning


class Adapter(Protocol):
    peft_type: str

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The tensors to save, with PEFT's key names."""

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        """PEFT's adapter_config.json for this adapter."""


METHODS: dict[str, ModuleType] = {
    "prompt_tuning": prompt_tuning,
    "p_tuning": p_tuning,
    "prefix_tuning": prefix_tuning,
    "lora": lora,
    "freeze": freeze,
    "full": full,
}
BY_PEFT_TYPE: dict[str, type] = {
    prompt_tuning.PEFT_TYPE: prompt_tuning.PromptTuning,
    p_tuning.PEFT_TYPE: p_tuning.PTuning,
    prefix_tuning.PEFT_TYPE: prefix_tuning.PrefixTuning,
    lora.PEFT_TYPE: lora.Lora,
}
PROMPT_PEFT_TYPES = (prompt_tuning.PEFT_TYPE, p_tuning.PEFT_TYPE, prefix_tuning.PEFT_TYPE)
"""Adapters that are a prefix: the ones one base model can serve side by side in a batch."""


def adapter_from_checkpoint(config: dict[str, Any], state: dict[str, torch.Tensor], where: str,
                            base: PreTrainedModel | None = None, trainable: bool = False):
    """Rebuild the adapter module a checkpoint holds (any supported ``peft_type``). A LoRA adapter
    is put into ``base`` in place (``trainable`` to train it further)."""
    peft_type = str(config.get("peft_type", ""))
    if peft_type not in BY_PEFT_TYPE:
        raise CheckpointError(
            f"{where}: peft_type {peft_type!r} is not supported yet (supported: {', '.join(BY_PEFT_TYPE)})"
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise CheckpointError(f"{where}: task_type {config.get('task_type')!r}; softprompt serves CAUSAL_LM adapters")
    if peft_type not in PROMPT_PEFT_TYPES:
        return BY_PEFT_TYPE[peft_type].from_checkpoint(config, state, where, base=base, trainable=trainable)
    return BY_PEFT_TYPE[peft_type].from_checkpoint(config, state, where)


def base_metadata(base: PreTrainedModel) -> dict[str, str]:
    """The base model's shape, written into an adapter's safetensors metadata (PEFT ignores it) so
    that :func:`check_compatible` can refuse the adapter on a base of another shape."""
    cfg = base.config.get_text_config()
    return {"base_hidden_size": str(cfg.hidden_size), "base_vocab_size": str(base.get_input_embeddings().num_embeddings)}


def check_compatible(config: dict[str, Any], base: PreTrainedModel, base_name: str, where: str,
                     metadata: dict[str, str] | None = None) -> None:
    """Refuse an adapter trained for a base of another shape (its config's dimensions, and the
    hidden size / vocabulary recorded in ``metadata`` by softprompt); warn when only the name differs."""
    hidden = base.config.get_text_config().hidden_size
    ours = base_metadata(base)
    for key, what in (("base_hidden_size", "hidden size"), ("base_vocab_size", "vocabulary")):
        theirs = (metadata or {}).get(key)
        if theirs is not None and theirs != ours[key]:
            raise CheckpointError(
                f"{where}: it was trained for a base with a {what} of {theirs}, but {base_name} has a {what} of "
                f"{ours[key]} (trained for {config.get('base_model_name_or_path')!r})")
    token_dim = config.get("token_dim")
    incompatibility = getattr(BY_PEFT_TYPE.get(str(config.get("peft_type"))), "incompatibility", None)
    if incompatibility is not None:  # the method knows its own shapes (prefix tuning: K/V width, layers)
        reason = incompatibility(config, base)
        if reason:
            raise CheckpointError(f"{where}: {reason}; it was trained for {config.get('base_model_name_or_path')!r}")
    elif token_dim is not None and int(token_dim) != hidden:
        raise CheckpointError(
            f"{where}: adapter token_dim {token_dim} does not match {base_name}'s hidden size {hidden}; "
            f"it was trained for {config.get('base_model_name_or_path')!r}"
        )
    trained_for = config.get("base_model_name_or_path")
    if trained_for and trained_for != base_name and Path(str(trained_for)).name != Path(base_name).name:
        logging.getLogger("softprompt").warning("%s was trained on %r; using it with %r", where, trained_for, base_name)
