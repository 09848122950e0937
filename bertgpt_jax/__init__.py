"""bertgpt-jax: BERT and GPT pretraining in JAX and Flax NNX."""

from typing import Any

from bertgpt_jax.config import Config, ConfigError, load_config


def __getattr__(name: str) -> Any:
    # Imported on first use: `bertgpt` starts (and re-executes itself, see allocator.py) before
    # JAX is imported.
    if name == "load_pretrained":
        from bertgpt_jax.inference import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'bertgpt_jax' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "load_config", "load_pretrained"]
