"""Prefix tuning (Li & Liang, 2021): trainable per-layer keys and values in front of every row.

The module mirrors PEFT's ``PrefixEncoder`` (``embedding``, and ``transform`` with
``prefix_projection``), so state dicts line up. Its flat output ``(L, num_layers * 2 * kv_dim)``,
``kv_dim = n_kv_heads * head_dim``, is cut into per-layer K/V exactly as ``PeftModel.get_prompt``
does (GQA models get ``n_kv_heads`` heads, as PEFT provisions them). The K/V are used as they are:
no RoPE is applied to them, in PEFT as here; the real tokens' positions start at ``L``.

Saved exactly as PEFT saves ``PREFIX_TUNING``: key ``prompt_embeddings`` holds the flat prefix
``(L, num_layers * 2 * kv_dim)`` (after the projection, if any), the config says
``inference_mode: true``, ``token_dim = kv_dim`` and ``num_attention_heads = n_kv_heads``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import CheckpointError
from softprompt.config import DEFAULT_NUM_VIRTUAL_TOKENS, ArgumentError, MethodArgs
from softprompt.kv import PrefixKV, build_prefix
from softprompt.methods.spec import COUNT, OPTIONAL_COUNT, ConfigField, MethodSpec, Recipe, register

PEFT_TYPE = "PREFIX_TUNING"
STATE_KEY = "prompt_embeddings"


def _cached_shapes(base: PreTrainedModel) -> tuple[int, set[tuple[int, int]]]:
    """(layers, {(n_kv_heads, head_dim)}) of the K/V ``base`` keeps in its cache, read off a one-token pass."""
    embed = base.get_input_embeddings()
    with torch.no_grad():
        prefix = build_prefix(base, embed(torch.zeros(1, dtype=torch.long, device=embed.weight.device)))
    return len(prefix.keys), {(t.shape[1], t.shape[3]) for t in (*prefix.keys, *prefix.values)}


def kv_problem(base: PreTrainedModel) -> str | None:
    """Why no prefix of PEFT's layout fits ``base`` (None: one does): its layers keep K/V of different shapes."""
    return _differ(_cached_shapes(base)[1])


def _differ(shapes: set[tuple[int, int]]) -> str | None:
    if len(shapes) == 1:
        return None
    return (f"its layers keep keys and values of different (heads, head_dim) {sorted(shapes)}, and a prefix holds one "
            "shape for every layer (PEFT leaves the other layers without it): use prompt_tuning or p_tuning")


def kv_shape(base: PreTrainedModel) -> tuple[int, int, int]:
    """``(num_layers, n_kv_heads, head_dim)`` of the K/V ``base`` keeps in its cache, as PEFT provisions a prefix.

    Read off the cache of a one-token pass, not the config: a config does not always say (multi-query
    Falcon keeps one K/V head whatever ``num_kv_heads`` says; Gemma sets ``head_dim`` apart from the
    hidden size). ArgumentError for a model whose layers differ (:func:`kv_problem`).
    """
    layers, shapes = _cached_shapes(base)
    why = _differ(shapes)
    if why:
        raise ArgumentError(f"--finetuning_type prefix_tuning cannot work on this {base.config.model_type} model: {why}")
    (kv_heads, head_dim), = shapes
    return layers, kv_heads, head_dim


class PrefixTuning(nn.Module):
    """PEFT's prefix encoder. ``prefix_kv()`` gives per-layer K/V ``(1, n_kv_heads, L, head_dim)``."""

    def __init__(self, num_virtual_tokens: int, num_layers: int, kv_heads: int, head_dim: int,
                 prefix_projection: bool = False, encoder_hidden_size: int | None = None,
                 inference_mode: bool = False):
        super().__init__()
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        kv_dim = kv_heads * head_dim
        self.encoder_hidden_size = encoder_hidden_size or kv_dim  # PEFT's default: token_dim
        self.prefix_projection, self.inference_mode = prefix_projection, inference_mode
        self.init = "random"
        flat = num_layers * 2 * kv_dim
        if prefix_projection and not inference_mode:
            self.embedding = nn.Embedding(num_virtual_tokens, kv_dim)
            self.transform = nn.Sequential(nn.Linear(kv_dim, self.encoder_hidden_size), nn.Tanh(),
                                           nn.Linear(self.encoder_hidden_size, flat))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, flat)

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.weight.shape[0]

    def flat_prefix(self) -> torch.Tensor:
        """The prefix as PEFT's encoder outputs it: (L, num_layers * 2 * n_kv_heads * head_dim)."""
        if self.prefix_projection and not self.inference_mode:
            return self.transform(self.embedding.weight)
        return self.embedding.weight

    def prefix_kv(self) -> PrefixKV:
        """Per-layer keys and values, each (1, n_kv_heads, L, head_dim), split as PEFT's ``get_prompt``."""
        L = self.num_virtual_tokens
        kv = self.flat_prefix().view(L, 2 * self.num_layers, self.kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # (2 * layers, nkv, L, hs): layer i's K at 2i, V at 2i + 1
        keys = [kv[2 * i].unsqueeze(0) for i in range(self.num_layers)]  # (1, nkv, L, hs)
        values = [kv[2 * i + 1].unsqueeze(0) for i in range(self.num_layers)]
        return PrefixKV(keys, values)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The flat prefix, projected if need be (PEFT's ``get_prompt_embedding_to_save``)."""
        with torch.no_grad():
            flat = self.flat_prefix()
        return {STATE_KEY: flat.detach().float().cpu().contiguous()}

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        """PEFT's ``PrefixTuningConfig`` fields after its GQA adjustment, ``inference_mode`` true."""
        return {
            "peft_type": PEFT_TYPE,
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": self.kv_heads * self.head_dim,
            "num_transformer_submodules": 1,
            "num_attention_heads": self.kv_heads,
            "num_layers": self.num_layers,
            "encoder_hidden_size": self.encoder_hidden_size,
            "prefix_projection": self.prefix_projection,
            "init_weights": None,
            "inference_mode": True,
            "auto_mapping": None,
            "modules_to_save": None,
            "revision": None,
        }

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], state: dict[str, torch.Tensor], where: str,
                        **_: Any) -> PrefixTuning:
        """The saved flat prefix, as an inference-mode module (no projection to run)."""
        weight = saved_prefix(config, state, where)
        n, layers, token_dim, heads = (config[k] for k in ("num_virtual_tokens", "num_layers", "token_dim",
                                                           "num_attention_heads"))
        module = cls(n, layers, heads, token_dim // heads, bool(config.get("prefix_projection")),
                     config.get("encoder_hidden_size"), inference_mode=True)
        with torch.no_grad():
            module.embedding.weight.copy_(weight)
        return module

    @staticmethod
    def incompatibility(config: dict[str, Any], base: PreTrainedModel) -> str | None:
        """Why a saved prefix cannot sit in front of ``base`` (None when it can)."""
        layers, kv_heads, head_dim = kv_shape(base)
        want = {"num_layers": layers, "token_dim": kv_heads * head_dim, "num_attention_heads": kv_heads}
        for key, value in want.items():
            if config.get(key) is not None and int(config[key]) != value:
                return f"adapter {key} {config[key]} does not match the base model's {value}"
        return None


CONFIG_FIELDS = {
    "num_virtual_tokens": COUNT, "num_layers": COUNT, "token_dim": COUNT, "num_attention_heads": COUNT,
    "encoder_hidden_size": OPTIONAL_COUNT, "prefix_projection": ConfigField((bool, type(None))),
    "num_transformer_submodules": ConfigField((int, type(None))),
}
"""The adapter_config.json fields :meth:`PrefixTuning.from_checkpoint` reads."""


def saved_prefix(config: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """The flat prefix (L, num_layers * 2 * token_dim) of a checkpoint, checked against its config (whose fields
    :data:`CONFIG_FIELDS` have been checked)."""
    if STATE_KEY not in state:
        raise CheckpointError(f"{where}: no '{STATE_KEY}' tensor in adapter_model.safetensors")
    if config.get("num_transformer_submodules") not in (None, 0, 1):
        raise CheckpointError(f"{where}: num_transformer_submodules must be 1 for a causal LM")
    n, layers, token_dim, heads = (config[k] for k in ("num_virtual_tokens", "num_layers", "token_dim",
                                                       "num_attention_heads"))
    weight = state[STATE_KEY]
    if token_dim % heads or tuple(weight.shape) != (n, layers * 2 * token_dim):
        raise CheckpointError(f"{where}: '{STATE_KEY}' has shape {tuple(weight.shape)}, expected "
                              f"({n}, {layers * 2 * token_dim}) = (num_virtual_tokens, num_layers * 2 * token_dim), "
                              f"with token_dim ({token_dim}) a multiple of num_attention_heads ({heads})")
    if not weight.is_floating_point():
        raise CheckpointError(f"{where}: '{STATE_KEY}' holds {weight.dtype}, not floating-point numbers")
    return weight


def prefill_prefix(base: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """The frozen base's K/V of the tokens ``ids`` (length L), flat as PEFT stores a prefix:
    (L, num_layers * 2 * n_kv_heads * head_dim)."""
    embed = base.get_input_embeddings()
    with torch.no_grad():
        prefix = build_prefix(base, embed(torch.tensor(ids, device=embed.weight.device)))  # (L, d) in
        kv = torch.stack([t[0] for k, v in zip(prefix.keys, prefix.values) for t in (k, v)])  # (2*layers, nkv, L, hs)
    return kv.permute(2, 0, 1, 3).reshape(len(ids), -1).float().cpu()  # (L, layers * 2 * nkv * hs)


def initial_ids(
    args: MethodArgs, tokenizer: PreTrainedTokenizerBase, vocab: int, generator: torch.Generator
) -> list[int] | None:
    """Token ids whose prefill starts the prefix (None for a random start), tiled or cut to length."""
    if args.init == "random":
        return None
    if args.init == "sample_vocab":
        L = args.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
        return torch.randint(0, vocab, (L,), generator=generator).tolist()
    ids = tokenizer(args.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ArgumentError("--prompt_tuning_init_text tokenizes to nothing; give some text")
    L = args.num_virtual_tokens or len(ids)
    return (ids * (L // len(ids) + 1))[:L]


def create(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs, generator: torch.Generator
) -> PrefixTuning:
    """A new prefix for ``base``: PEFT's random init (seeded by ``generator``), or the prefill of a text."""
    layers, kv_heads, head_dim = kv_shape(base)
    ids = initial_ids(args, tokenizer, base.get_input_embeddings().weight.shape[0], generator)
    L = len(ids) if ids is not None else (args.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = PrefixTuning(L, layers, kv_heads, head_dim, args.prefix_projection, args.encoder_hidden_size)
    if ids is not None:
        with torch.no_grad():
            module.embedding.weight.copy_(prefill_prefix(base, ids))
        module.init = args.init
    return module


def check(args: MethodArgs) -> None:
    """The inits prefix tuning can honour: random, sample_vocab, or a text's K/V, and not with a projection."""
    if args.init not in ("random", "sample_vocab", "text"):
        raise ArgumentError(f"--prompt_tuning_init {args.init} is for prompt_tuning; prefix_tuning takes "
                            "random, sample_vocab or text")
    if args.init == "text" and args.prompt_tuning_init_text is None:
        raise ArgumentError("--prompt_tuning_init text needs --prompt_tuning_init_text with prefix_tuning "
                            "(prompt_tuning alone takes the dataset's instruction)")
    if args.prefix_projection and args.init != "random":
        raise ArgumentError(f"--prompt_tuning_init {args.init} sets the prefix K/V directly, which "
                            "--prefix_projection cannot: drop one of them")


SPEC = register(MethodSpec(
    name="prefix_tuning", kind="prefix", build=create, peft_type=PEFT_TYPE,
    from_checkpoint=PrefixTuning.from_checkpoint, incompatibility=PrefixTuning.incompatibility, check=check,
    arguments=("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text", "encoder_hidden_size",
               "prefix_projection"),
    config_fields=CONFIG_FIELDS, check_state=saved_prefix,
    base_problem=kv_problem,
    recipe=Recipe(learning_rate=3e-2, lr_scheduler_type="constant"),
))
PrefixTuning.method = SPEC  # a module made by the class itself knows its method too
