"""Flax NNX models: the shared transformer core and the BERT and GPT families."""

from __future__ import annotations

import jax

from bertgpt_jax.config import ModelConfig
from bertgpt_jax.model.bert import Bert
from bertgpt_jax.model.gpt import Gpt
from bertgpt_jax.model.transformer import Transformer

Model = Bert | Gpt


def build_model(config: ModelConfig, key: jax.Array) -> Model:
    """The family's model with freshly initialised float32 parameters."""
    return Bert(config, key) if config.family == "bert" else Gpt(config, key)


__all__ = ["Bert", "Gpt", "Model", "Transformer", "build_model"]
