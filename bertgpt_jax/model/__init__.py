"""Flax NNX models: the shared transformer core, BERT (core + MLM/NSP heads) and GPT (core + tied
LM head). Which model a run trains is the task's choice (bertgpt_jax/tasks)."""

from __future__ import annotations

from bertgpt_jax.model.bert import Bert
from bertgpt_jax.model.gpt import Gpt
from bertgpt_jax.model.transformer import Transformer

__all__ = ["Bert", "Gpt", "Transformer"]
