"""bertgpt-jax: BERT and GPT pretraining in JAX and Flax NNX."""

from bertgpt_jax.config import Config, ConfigError, load_config
from bertgpt_jax.inference import load_pretrained

__all__ = ["Config", "ConfigError", "load_config", "load_pretrained"]
