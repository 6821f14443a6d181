"""P-tuning (Liu et al., 2021): virtual-token embeddings passed through a trainable encoder.

The module mirrors PEFT's ``PromptEncoder`` (``peft.tuners.p_tuning.model``) parameter for
parameter (``embedding``, ``mlp_head``, ``lstm_head``), so state dicts line up. ``prompt_embeds()``
is the *encoded* prompt ``(L, d)``; the engine then runs it like prompt tuning.

Saved exactly as PEFT saves ``P_TUNING``: key ``prompt_embeddings`` holds the encoded prompt
``(L, d)`` and the config says ``inference_mode: true``; the encoder itself is not saved (PEFT
drops it too). Loading such a checkpoint, here or in PEFT, gives an encoder-less module whose
``embedding`` *is* the prompt.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import CheckpointError
from softprompt.config import DEFAULT_NUM_VIRTUAL_TOKENS, MethodArgs
from softprompt.methods.prompt_tuning import PROMPT_FIELDS, peft_prompt_config, saved_prompt
from softprompt.methods.spec import OPTIONAL_COUNT, ConfigField, MethodSpec, Recipe, register, soft_input_problem

PEFT_TYPE = "P_TUNING"
STATE_KEY = "prompt_embeddings"
ENCODER_TYPES = ("MLP", "LSTM")
log = logging.getLogger("softprompt")


class PTuning(nn.Module):
    """PEFT's prompt encoder. ``prompt_embeds()`` is ``(num_virtual_tokens, token_dim)``.

    With ``inference_mode`` (a loaded checkpoint) there is no encoder: the embedding is the prompt.
    """

    def __init__(self, num_virtual_tokens: int, token_dim: int, encoder_type: str = "MLP",
                 hidden_size: int | None = None, num_layers: int = 2, dropout: float = 0.0,
                 inference_mode: bool = False):
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_reparameterization_type must be MLP or LSTM, got {encoder_type!r}")
        hidden = hidden_size or token_dim
        self.encoder_type, self.hidden_size, self.num_layers, self.dropout = encoder_type, hidden, num_layers, dropout
        self.inference_mode = inference_mode
        self.init = "random"
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
        if inference_mode:
            return
        if encoder_type == "LSTM":
            self.lstm_head = nn.LSTM(input_size=token_dim, hidden_size=hidden, num_layers=num_layers,
                                     dropout=dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(hidden * 2, hidden * 2), nn.ReLU(), nn.Linear(hidden * 2, token_dim))
        else:  # PEFT's MLP: always three linear layers, encoder_num_layers is ignored
            self.mlp_head = nn.Sequential(nn.Linear(token_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                          nn.ReLU(), nn.Linear(hidden, token_dim))

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.weight.shape[0]

    @property
    def token_dim(self) -> int:
        return self.embedding.weight.shape[1]

    def prompt_embeds(self) -> torch.Tensor:
        """The encoded prompt (L, d); gradients reach the encoder."""
        x = self.embedding.weight  # (L, d), PEFT's embedding(arange(L))
        if self.inference_mode:
            return x
        if self.encoder_type == "LSTM":
            out, _ = self.lstm_head(x.unsqueeze(0))  # (1, L, 2 * hidden)
            return self.mlp_head(out)[0]  # (L, d)
        return self.mlp_head(x)  # (L, d)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The encoded prompt, as PEFT's ``get_prompt_embedding_to_save`` (dropout off)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                encoded = self.prompt_embeds()
        finally:
            self.train(was_training)
        return {STATE_KEY: encoded.detach().float().cpu().contiguous()}

    def adapter_config(self, base_model_name_or_path: str, base: PreTrainedModel) -> dict[str, Any]:
        """PEFT's ``PromptEncoderConfig`` fields, ``inference_mode`` true as PEFT writes it."""
        return {
            **peft_prompt_config(PEFT_TYPE, base_model_name_or_path, base, self.num_virtual_tokens, self.token_dim),
            "encoder_reparameterization_type": self.encoder_type,
            "encoder_hidden_size": self.hidden_size,
            "encoder_num_layers": self.num_layers,
            "encoder_dropout": self.dropout,
        }

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], state: dict[str, torch.Tensor], where: str, **_: Any) -> PTuning:
        """The saved encoded prompt, as an encoder-less (inference-mode) module."""
        weight = saved_encoded_prompt(config, state, where)
        n = weight.shape[0]
        encoder_type = str(config.get("encoder_reparameterization_type") or "MLP").upper()
        module = cls(n, weight.shape[1], encoder_type, config.get("encoder_hidden_size"),
                     int(config.get("encoder_num_layers") or 2), float(config.get("encoder_dropout") or 0.0),
                     inference_mode=True)
        with torch.no_grad():
            module.embedding.weight.copy_(weight)
        return module


CONFIG_FIELDS = {
    **PROMPT_FIELDS,
    "encoder_reparameterization_type": ConfigField((str, type(None))),
    "encoder_hidden_size": OPTIONAL_COUNT,
    "encoder_num_layers": OPTIONAL_COUNT,
    "encoder_dropout": ConfigField((float, type(None)), 0.0, 1.0),
}
"""The adapter_config.json fields :meth:`PTuning.from_checkpoint` reads."""


def saved_encoded_prompt(config: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """The saved encoded prompt (L, d), checked against the config, whose encoder type must be MLP or LSTM."""
    encoder_type = str(config.get("encoder_reparameterization_type") or "MLP").upper()
    if encoder_type not in ENCODER_TYPES:
        raise CheckpointError(f"{where}: encoder_reparameterization_type {encoder_type[:40]!r} is not MLP or LSTM")
    return saved_prompt(config, state, where)


def create(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: MethodArgs, generator: torch.Generator
) -> PTuning:
    """A new prompt encoder for ``base``, initialised as PEFT does (torch defaults), seeded by ``generator``."""
    d = base.get_input_embeddings().weight.shape[1]
    if args.encoder_reparameterization_type == "MLP":
        for name, default in (("encoder_num_layers", 2), ("encoder_dropout", 0.0)):
            if getattr(args, name) != default:
                log.warning("--%s applies to the LSTM encoder only; ignored with the MLP", name)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PTuning(args.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS, d, args.encoder_reparameterization_type,
                       args.encoder_hidden_size, args.encoder_num_layers, args.encoder_dropout)


SPEC = register(MethodSpec(
    name="p_tuning", kind="prompt", build=create, peft_type=PEFT_TYPE, from_checkpoint=PTuning.from_checkpoint,
    arguments=("num_virtual_tokens", "encoder_reparameterization_type", "encoder_hidden_size", "encoder_num_layers",
               "encoder_dropout"),
    config_fields=CONFIG_FIELDS, check_state=saved_encoded_prompt,
    base_problem=soft_input_problem,
    recipe=Recipe(learning_rate=3e-2, lr_scheduler_type="constant"),
))
PTuning.method = SPEC  # a module made by the class itself knows its method too
