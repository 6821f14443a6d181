"""The engine: prefix KV building, batched forward, generation. Token ids and tensors only."""

from softprompt.engine.forward import decoder_hidden, labelled_loss
from softprompt.engine.generate import generate
from softprompt.kv import PrefixKV, build_prefix

__all__ = ["PrefixKV", "build_prefix", "decoder_hidden", "labelled_loss", "generate"]
