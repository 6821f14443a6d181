"""The engine: prefix KV building, batched forward, generation. Token ids and tensors only."""

from softprompt.engine.forward import batch_loss, decoder_hidden, labelled_loss, row_losses
from softprompt.engine.generate import generate
from softprompt.kv import PrefixKV, build_prefix

__all__ = ["PrefixKV", "build_prefix", "batch_loss", "row_losses", "decoder_hidden", "labelled_loss", "generate"]
