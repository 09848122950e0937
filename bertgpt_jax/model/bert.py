"""BERT for pretraining: the shared core (bidirectional, post-LN) + masked-LM head + pooler +
next-sentence classifier, laid out exactly as HuggingFace `BertForPreTraining`.

The masked-LM head runs only at the gathered prediction positions ([B, P], as the original
BERT's `gather_indexes`), so training never builds full-vocabulary logits for every token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.model.layers import Dense, LayerNorm, param
from bertgpt_jax.model.transformer import Transformer
from bertgpt_jax.ops.gelu import activation
from bertgpt_jax.parallel import sharding as sh

Array = jax.Array


class MaskedLmHead(nnx.Module):
    """dense -> GELU -> LayerNorm -> tied decoder (word embeddings) + output bias."""

    def __init__(self, config: ModelConfig, key: Array):
        self.transform = Dense(
            config.hidden_size, (config.hidden_size,), (sh.EMBED, None), config, key
        )
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.output_bias = param(key, (config.padded_vocab_size,), (sh.VOCAB,), 0.0)
        self.activation = config.activation

    def __call__(self, hidden: Array, core: Transformer) -> Array:
        h = self.norm(activation(self.activation, self.transform(hidden)))
        dtype = jnp.dtype(core.config.dtype)
        return core.embeddings.attend(h, dtype) + self.output_bias[...]  # [..., V] float32


class Bert(nnx.Module):
    def __init__(self, config: ModelConfig, key: Array):
        k_core, k_mlm, k_pool, k_nsp = jax.random.split(key, 4)
        d = config.hidden_size
        self.config = config
        self.core = Transformer(config, k_core)
        self.mlm_head = MaskedLmHead(config, k_mlm)
        self.pooler = Dense(d, (d,), (sh.EMBED, None), config, k_pool)
        self.nsp_head = Dense(d, (2,), (sh.EMBED, None), config, k_nsp)

    def encode(
        self,
        input_ids: Array,
        *,
        token_type_ids: Array | None = None,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        key: Array | None = None,
    ) -> Array:
        return self.core(
            input_ids,
            positions=positions,
            segment_ids=segment_ids,
            token_type_ids=token_type_ids,
            key=key,
        )

    def heads(self, hidden: Array, mlm_positions: Array | None) -> dict[str, Array]:
        """hidden [B, L, D]; mlm_positions [B, P] or None for logits at every position."""
        if mlm_positions is not None:
            hidden_at = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)  # [B, P, D]
        else:
            hidden_at = hidden
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))  # [B, D], the [CLS] vector
        return {
            "mlm_logits": self.mlm_head(hidden_at, self.core),  # [B, P, V]
            "nsp_logits": self.nsp_head(pooled),  # [B, 2]
        }

    def __call__(
        self,
        input_ids: Array,
        *,
        token_type_ids: Array | None = None,
        segment_ids: Array | None = None,
        mlm_positions: Array | None = None,
        key: Array | None = None,
    ) -> dict[str, Array]:
        hidden = self.encode(
            input_ids, token_type_ids=token_type_ids, segment_ids=segment_ids, key=key
        )
        return self.heads(hidden, mlm_positions)
