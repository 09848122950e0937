"""BERT with a fine-tuning head, laid out as HuggingFace's task classes: the shared core, then

* `SequenceClassifier` (`BertForSequenceClassification`): pooled [CLS] -> dropout -> dense [C];
* `TokenClassifier` (`BertForTokenClassification`): every hidden state -> dropout -> dense [C];
* `SpanClassifier` (`BertForQuestionAnswering`): every hidden state -> dense [2], the start and
  end logits of an answer span.

The head is new (random, HF's init: normal(0, initializer_range) kernels, zero biases); the core
and the pooler are what a pretrained model hands over (`core/...`, `pooler/...`, as in `Bert`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.model.layers import Dense
from bertgpt_jax.model.transformer import Transformer
from bertgpt_jax.ops.dropout import dropout, split_key
from bertgpt_jax.parallel import sharding as sh

Array = jax.Array


class _Encoder(nnx.Module):
    """The shared core and the call every head makes of it: `head(hidden, key)` is the part a
    task adds; a head without dropout (`head_dropout` False) leaves the whole key to the core."""

    config: ModelConfig
    core: Transformer
    dropout_rate: float
    head_dropout = True
    head: Callable[[Array, Array | None], Any]  # each class's own method

    def __call__(
        self,
        input_ids: Array,
        *,
        token_type_ids: Array | None = None,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        key: Array | None = None,
    ) -> Any:
        """-> the head's logits (see each class), float32."""
        k_core, k_head = split_key(key, 2) if self.head_dropout else (key, None)
        hidden = self.core(
            input_ids,
            positions=positions,
            segment_ids=segment_ids,
            token_type_ids=token_type_ids,
            key=k_core,
        )  # [B, L, D]
        return self.head(hidden, k_head)


class SequenceClassifier(_Encoder):
    def __init__(self, config: ModelConfig, num_labels: int, key: Array):
        k_core, k_pool, k_head = jax.random.split(key, 3)
        d = config.hidden_size
        self.config = config
        self.core = Transformer(config, k_core)
        self.pooler = Dense(d, (d,), (sh.EMBED, None), config, k_pool)
        self.classifier = Dense(d, (num_labels,), (sh.EMBED, None), config, k_head)
        self.dropout_rate = config.dropout_rate

    def head(self, hidden: Array, key: Array | None) -> Array:
        """-> logits [B, C]."""
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))  # [B, D], the [CLS] vector
        return self.classifier(dropout(pooled, self.dropout_rate, key))


class TokenClassifier(_Encoder):
    def __init__(self, config: ModelConfig, num_labels: int, key: Array):
        k_core, k_head = jax.random.split(key)
        self.config = config
        self.core = Transformer(config, k_core)
        self.classifier = Dense(config.hidden_size, (num_labels,), (sh.EMBED, None), config, k_head)
        self.dropout_rate = config.dropout_rate

    def head(self, hidden: Array, key: Array | None) -> Array:
        """-> logits [B, L, C]."""
        return self.classifier(dropout(hidden, self.dropout_rate, key))


class SpanClassifier(_Encoder):
    head_dropout = False

    def __init__(self, config: ModelConfig, key: Array):
        k_core, k_head = jax.random.split(key)
        self.config = config
        self.core = Transformer(config, k_core)
        self.qa_outputs = Dense(config.hidden_size, (2,), (sh.EMBED, None), config, k_head)
        self.dropout_rate = config.dropout_rate

    def head(self, hidden: Array, key: Array | None) -> tuple[Array, Array]:
        """-> start and end logits, each [B, L]."""
        logits = self.qa_outputs(hidden)  # [B, L, 2]
        return logits[..., 0], logits[..., 1]
