"""Adapters on disk, for use: the one way to read an adapter folder, check that it fits a base model,
rebuild its module, and write a trained module back.

Every command that takes an adapter (``chat``, ``predict``, ``eval``, ``serve``, ``export``,
``inspect``, training that continues one) goes through :func:`read_adapter` and
:meth:`AdapterFolder.module`; what a command accepts it decides from the folder's
:class:`~softprompt.methods.spec.MethodSpec` (``served``, ``exportable``, ``kind``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from softprompt.checkpoint import CheckpointError, is_model_folder, load_adapter, shown_path, write_adapter_files
from softprompt.files import one_line
from softprompt.methods.spec import (
    OPTIONAL_COUNT, ConfigField, MethodSpec, by_peft_type, of, peft_types,
)

log = logging.getLogger("softprompt")
MODEL_FOLDER = "a model folder (full / freeze fine-tuning)"
"""How a whole model folder given where an adapter was expected is named in messages."""


@dataclass
class AdapterFolder:
    """A PEFT adapter folder's files and the method that saved them."""

    path: str
    config: dict[str, Any]
    """adapter_config.json."""
    state: dict[str, torch.Tensor]
    """adapter_model.safetensors (or .bin), PEFT's key names."""
    metadata: dict[str, str]
    """The safetensors metadata (softprompt records the base's shape and the init there)."""
    spec: MethodSpec

    @property
    def peft_type(self) -> str:
        return str(self.spec.peft_type)

    def module(self, base: PreTrainedModel, base_name: str, trainable: bool = False,
               copy_base: bool = False) -> tuple[nn.Module, PreTrainedModel]:
        """(the adapter module, the base it works on), after checking it fits ``base``. A weights method
        (LoRA) goes into ``base`` itself, or into a copy of it with ``copy_base`` (others use ``base`` too)."""
        check_compatible(self.config, base, base_name, self.path, self.metadata)
        if self.spec.kind == "weights" and copy_base:
            base = copy.deepcopy(base)
        return self.spec.load(self.config, self.state, self.path, base=base, trainable=trainable), base


def read_adapter(path: str | Path) -> AdapterFolder:
    """Read a PEFT adapter folder, find its method and validate it completely, once, before any use: one-line
    CheckpointErrors for a path that cannot name a folder, a missing or damaged folder, a model folder, a
    ``peft_type`` / ``task_type`` softprompt does not run, and what :func:`check_adapter` refuses."""
    where = shown_path(path)
    if is_model_folder(path):
        raise CheckpointError(f"{where} is {MODEL_FOLDER}, not an adapter")
    config, state, metadata = load_adapter(path)
    peft_type = config.get("peft_type")
    spec = by_peft_type(peft_type) if isinstance(peft_type, str) else None
    if spec is None:
        raise CheckpointError(f"{where}: peft_type {one_line(repr(peft_type), 80)} is not supported yet "
                              f"(supported: {', '.join(peft_types())})")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise CheckpointError(f"{where}: task_type {one_line(repr(config.get('task_type')), 80)}; softprompt "
                              "serves CAUSAL_LM adapters")
    check_adapter(config, state, spec, where)
    return AdapterFolder(str(path), config, state, metadata, spec)


COMMON_FIELDS = {
    "base_model_name_or_path": ConfigField((str, type(None))),
    "token_dim": OPTIONAL_COUNT,  # compared with the base's hidden size (check_compatible)
}
"""adapter_config.json fields read for every method (besides ``peft_type`` and ``task_type``)."""


def check_adapter(config: dict[str, Any], state: dict[str, torch.Tensor], spec: MethodSpec, where: str) -> None:
    """Refuse (CheckpointError naming the field or tensor) a config field of the wrong type or out of range
    (:data:`COMMON_FIELDS` and the method's ``config_fields``), a tensor holding NaN or infinity, and tensors
    whose names or shapes disagree with the config (the method's ``check_state``)."""
    for key, rule in {**COMMON_FIELDS, **spec.config_fields}.items():
        if key not in config:
            if rule.required:
                raise CheckpointError(f"{where}: adapter_config.json has no '{key}', which {spec.name} needs")
            continue
        problem = rule.problem(config[key])
        if problem:
            raise CheckpointError(f"{where}: adapter_config.json '{key}' {problem}")
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: tensor {one_line(name, 120)!r} holds NaN or infinite values")
    if spec.check_state is not None:
        spec.check_state(config, state, where)


def base_metadata(base: PreTrainedModel) -> dict[str, str]:
    """The base model's shape, written into an adapter's safetensors metadata (PEFT ignores it) so
    that :func:`check_compatible` can refuse the adapter on a base of another shape."""
    cfg = base.config.get_text_config()
    return {"base_hidden_size": str(cfg.hidden_size), "base_vocab_size": str(base.get_input_embeddings().num_embeddings)}


def check_compatible(config: dict[str, Any], base: PreTrainedModel, base_name: str, where: str,
                     metadata: dict[str, str] | None = None) -> None:
    """Refuse an adapter trained for a base of another shape (its config's dimensions, and the
    hidden size / vocabulary recorded in ``metadata`` by softprompt); warn when only the name differs."""
    width = base.get_input_embeddings().weight.shape[1]  # the prompt's token_dim (OPT-350m: not the hidden size)
    ours = base_metadata(base)
    trained_for = config.get("base_model_name_or_path")
    for key, what in (("base_hidden_size", "hidden size"), ("base_vocab_size", "vocabulary")):
        theirs = (metadata or {}).get(key)
        if theirs is not None and theirs != ours[key]:
            raise CheckpointError(
                f"{where}: it was trained for a base with a {what} of {theirs}, but {base_name} has a {what} of "
                f"{ours[key]} (trained for {trained_for!r})")
    token_dim = config.get("token_dim")
    spec = by_peft_type(str(config.get("peft_type")))
    why = spec.base_problem(base) if spec is not None and spec.base_problem is not None else None
    if why:
        raise CheckpointError(f"{where}: a {spec.peft_type} adapter cannot work on {base_name}: {why}")
    if spec is not None and spec.incompatibility is not None:  # the method knows its own shapes (prefix tuning)
        reason = spec.incompatibility(config, base)
        if reason:
            raise CheckpointError(f"{where}: {reason}; it was trained for {trained_for!r}")
    elif token_dim is not None and int(token_dim) != width:
        raise CheckpointError(f"{where}: adapter token_dim {token_dim} does not match {base_name}'s hidden size "
                              f"{width}; it was trained for {trained_for!r}")
    if trained_for and trained_for != base_name and Path(str(trained_for)).name != Path(base_name).name:
        log.warning("%s was trained on %r; using it with %r", where, trained_for, base_name)


def save_adapter(adapter: nn.Module, folder: str | Path, base_name: str, base: PreTrainedModel,
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``adapter`` (or ``state``, an earlier copy of its tensors) to ``folder`` as its method saves:
    a PEFT adapter folder, or a whole model folder (full / freeze)."""
    if of(adapter).writes_model_folder:
        adapter.save_model_folder(folder, state)
        return
    state = adapter.adapter_state() if state is None else state
    config = adapter.adapter_config(base_name, base)
    meta = {"softprompt_init": str(getattr(adapter, "init", "")), **base_metadata(base)}
    write_adapter_files(folder, state, config, meta)


def describe(path: str | Path) -> str:
    """What a folder given as an adapter holds, for messages: 'a model folder (...)' or 'a LORA adapter'."""
    return MODEL_FOLDER if is_model_folder(path) else f"a {read_adapter(path).peft_type} adapter"
