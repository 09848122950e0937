"""GPT-2 language model: the shared core (causal, pre-LN, final LayerNorm) + an LM head tied
to the token embeddings, laid out exactly as HuggingFace `GPT2LMHeadModel`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.model.transformer import Transformer

Array = jax.Array


class Gpt(nnx.Module):
    def __init__(self, config: ModelConfig, key: Array):
        self.config = config
        self.core = Transformer(config, key)

    def __call__(
        self,
        input_ids: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        key: Array | None = None,
    ) -> dict[str, Array]:
        hidden = self.encode(input_ids, positions=positions, segment_ids=segment_ids, key=key)
        logits = self.core.embeddings.attend(hidden, jnp.dtype(self.config.dtype))  # [B, L, V]
        return {"logits": logits}

    def encode(
        self,
        input_ids: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        key: Array | None = None,
    ) -> Array:
        """The final hidden states [B, L, D], before the tied output projection."""
        return self.core(input_ids, positions=positions, segment_ids=segment_ids, key=key)

    def output_embedding(self) -> Array:
        """The token table [V, D] that the output projection shares (logits = h @ table.T)."""
        return self.core.embeddings.token[...]
