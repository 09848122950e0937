"""bertgpt-jax: BERT and GPT pretraining in JAX and Flax NNX."""

from typing import Any

from bertgpt_jax.core.config import Config, load_config
from bertgpt_jax.core.errors import ConfigError


def __getattr__(name: str) -> Any:
    # Imported on first use: `bertgpt` starts (and re-executes itself, see perf/allocator.py) before
    # JAX is imported.
    if name == "load_pretrained":
        from bertgpt_jax.pretrained.load import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'bertgpt_jax' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "load_config", "load_pretrained"]
