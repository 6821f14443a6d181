"""Training methods, one file each, each registered once as a :class:`MethodSpec` (see :mod:`.spec`).

A method's module is an ``nn.Module`` holding only the trainable parameters, with
``adapter_state()`` (PEFT's key names) and ``adapter_config(base_name, base)`` (PEFT's
adapter_config.json); a prompt method's gives ``prompt_embeds()`` (L, d), a prefix method's
``prefix_kv()``; a weights method's (lora, freeze, full) trains the base model itself. Importing
this package registers the built-in methods, in the order below, then any other file in this folder.
"""

from __future__ import annotations

import importlib
import pkgutil

from softprompt.methods.spec import (
    REGISTRY, MethodSpec, Recipe, TaskData, by_peft_type, get, of, peft_types, register, resolve, with_recipe,
)

BUILT_IN = ("prompt_tuning", "p_tuning", "prefix_tuning", "lora", "freeze", "full")
_NOT_METHODS = {"spec", "adapter", "prompt_init"}

for _name in BUILT_IN + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in _NOT_METHODS:
        importlib.import_module(f"{__name__}.{_name}")
_rank = {name: i for i, name in enumerate(BUILT_IN)}  # a method file may import another: keep BUILT_IN's order
for _name in sorted(REGISTRY, key=lambda n: _rank.get(n, len(BUILT_IN))):
    REGISTRY[_name] = REGISTRY.pop(_name)

METHODS = REGISTRY
"""finetuning_type -> :class:`MethodSpec`; ``METHODS[name].create(base, tokenizer, args, generator)``."""

from softprompt.methods.adapter import (  # noqa: E402
    AdapterFolder, base_metadata, check_compatible, describe, read_adapter, save_adapter,
)

__all__ = ["METHODS", "MethodSpec", "Recipe", "TaskData", "AdapterFolder", "by_peft_type", "get", "of", "peft_types",
           "register", "resolve", "with_recipe", "read_adapter", "save_adapter", "base_metadata", "check_compatible",
           "describe"]
