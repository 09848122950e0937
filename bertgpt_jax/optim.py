"""Learning-rate schedules and optimizers: AdamW, LAMB (large-batch BERT, You et al. 2020) and
Adafactor, each behind global-norm clipping, with weight decay masked off biases and LayerNorm
parameters (as google-research/bert's `exclude_from_weight_decay`)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from bertgpt_jax.config import TrainConfig

# Parameters that weight decay applies to; everything else is a bias or a LayerNorm scale/bias.
_DECAYED = frozenset({"kernel", "out_kernel", "token", "position", "token_type"})


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then linear or cosine decay to 0 at the last step."""
    peak = config.learning_rate
    warmup = min(config.warmup_steps, config.steps)
    decay_steps = max(config.steps - warmup, 1)
    if config.schedule == "constant":
        decay: optax.Schedule = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    else:
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matrices and embeddings, by name."""

    def is_decayed(path: tuple, _: Any) -> bool:
        return getattr(path[-1], "key", None) in _DECAYED

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        tx = optax.adamw(
            schedule, config.b1, config.b2, config.eps,
            weight_decay=config.weight_decay, mask=decay_mask,
        )  # fmt: skip
    elif config.optimizer == "lamb":
        tx = optax.lamb(
            schedule, config.b1, config.b2, config.eps,
            weight_decay=config.weight_decay, mask=decay_mask,
        )  # fmt: skip
    else:
        tx = optax.adafactor(
            schedule, weight_decay_rate=config.weight_decay or None, weight_decay_mask=decay_mask
        )
    if config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
