"""Freeze (partial-parameter) fine-tuning, as LLaMA-Factory's ``finetuning_type: freeze``: only
some decoder layers train, the rest of the model stays frozen; saved as a whole model folder.

``freeze_trainable_layers`` n > 0 trains the last n layers, n < 0 the first |n|;
``freeze_trainable_modules`` narrows that to modules inside those layers (``mlp``, ``self_attn``,
``q_proj``, ...; ``all`` keeps whole layers); ``freeze_extra_modules`` adds modules outside the
layers (``embed_tokens``, ``norm``, ...).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.config import ArgumentError, MethodArgs
from softprompt.methods.full import WeightTuning
from softprompt.methods.spec import MethodSpec, Recipe, register


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _matches(param_name: str, module: str) -> bool:
    """``module`` is one of the dotted parts of ``param_name`` before the tensor name."""
    return module in param_name.split(".")[:-1]


def trainable_names(base: PreTrainedModel, args: MethodArgs) -> list[str]:
    """Names (as in ``base.named_parameters()``) of the parameters that train."""
    layers = base.get_decoder().layers
    n_layers, n = len(layers), args.freeze_trainable_layers
    if abs(n) > n_layers:
        raise ArgumentError(f"--freeze_trainable_layers {n}: the model has {n_layers} decoder layers")
    chosen = range(n_layers - n, n_layers) if n > 0 else range(0, -n)
    modules = _names(args.freeze_trainable_modules)
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    names: list[str] = []
    for name, p in base.named_parameters():
        i = layer_of.get(id(p))
        if i is not None and i in chosen and (modules == ["all"] or any(_matches(name, m) for m in modules)):
            names.append(name)
    if modules != ["all"]:
        unknown = [m for m in modules if not any(_matches(name, m) for name in names)]
        if unknown:
            inside = sorted({path.split(".")[-1] for path, _ in layers[0].named_modules() if path})
            raise ArgumentError(f"--freeze_trainable_modules {unknown[0]!r} is no module of a decoder layer "
                                f"(it has: {', '.join(inside)})")
    for module in _names(args.freeze_extra_modules):
        extra = [name for name, p in base.named_parameters() if id(p) not in layer_of and _matches(name, module)]
        if not extra:
            outside = sorted({name.split(".")[-2] for name, p in base.named_parameters() if id(p) not in layer_of})
            raise ArgumentError(f"--freeze_extra_modules {module!r} is no module outside the decoder layers "
                                f"(there are: {', '.join(outside)})")
        names.extend(extra)
    return names


def create(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs,
           generator: torch.Generator) -> WeightTuning:
    """``base`` with the chosen layers' (and extra modules') parameters trainable."""
    names = set(trainable_names(base, args))
    for name, p in base.named_parameters():
        p.requires_grad_(name in names)
    return WeightTuning(base, tokenizer, "freeze")


SPEC = register(MethodSpec(
    name="freeze", kind="weights", build=create,
    arguments=("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules"),
    recipe=Recipe(learning_rate=5e-5, lr_scheduler_type="cosine"),
))
