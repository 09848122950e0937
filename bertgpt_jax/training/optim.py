"""Learning-rate schedules and optimizers: AdamW, LAMB (large-batch BERT, You et al. 2020) and
Adafactor, each behind global-norm clipping, with weight decay masked off biases and LayerNorm
parameters (as google-research/bert's `exclude_from_weight_decay`).

Every optimizer is an `Optimizer`: `init(params) -> state` and `apply(grads, state, params,
grad_norm, finite) -> (params, state)`, where a step whose loss or gradient is not finite leaves
both unchanged. LAMB and Adafactor are optax's. AdamW is written out (`FusedAdamW`, the same
update as `optax.chain(clip_by_global_norm, adamw)`) so that each tensor takes one pass per
output: optax's chain, followed by the non-finite select, makes XLA recompute the new moments
inside the parameter update, which needs copies of the old moments and a materialised clipped
gradient (figures in benchmarks/KERNELS.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from bertgpt_jax.core.config import TrainConfig

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


class Optimizer(Protocol):
    def init(self, params: Any) -> Any: ...

    def apply(
        self, grads: Any, state: Any, params: Any, grad_norm: jax.Array, finite: jax.Array
    ) -> tuple[Any, Any]: ...


def _keep(finite: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


@dataclasses.dataclass(frozen=True)
class OptaxOptimizer:
    """An optax transformation; the non-finite select follows its update."""

    tx: optax.GradientTransformation

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def apply(
        self, grads: Any, state: Any, params: Any, grad_norm: jax.Array, finite: jax.Array
    ) -> tuple[Any, Any]:
        updates, new_state = self.tx.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        return _keep(finite, new_params, params), _keep(finite, new_state, state)


class AdamWState(NamedTuple):
    updates: jax.Array  # int32 [], updates applied so far
    mu: Any  # first moments, shaped like the parameters
    nu: Any  # second moments


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
    """AdamW (Loshchilov & Hutter) behind global-norm clipping, as optax's, in three passes per
    tensor: new first moment, new second moment (both kept as they were on a non-finite step),
    then the parameter from those two; the barrier between makes the parameter pass read the
    new moments instead of recomputing them from old ones XLA would then have to copy."""

    schedule: optax.Schedule
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float  # <= 0: no clipping

    def init(self, params: Any) -> AdamWState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return AdamWState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def apply(
        self, grads: Any, state: AdamWState, params: Any, grad_norm: jax.Array, finite: jax.Array
    ) -> tuple[Any, AdamWState]:
        b1, b2 = self.b1, self.b2
        scale = jnp.ones((), jnp.float32)
        if self.clip_norm > 0:  # as optax.clip_by_global_norm
            scale = jnp.where(grad_norm < self.clip_norm, 1.0, self.clip_norm / grad_norm)
        mu = jax.tree.map(
            lambda m, g: jnp.where(finite, b1 * m + (1 - b1) * (g * scale), m), state.mu, grads
        )
        nu = jax.tree.map(
            lambda v, g: jnp.where(finite, b2 * v + (1 - b2) * jnp.square(g * scale), v),
            state.nu,
            grads,
        )
        mu, nu = jax.lax.optimization_barrier((mu, nu))
        count = optax.safe_int32_increment(state.updates)
        bias1 = 1 - b1 ** count.astype(jnp.float32)
        bias2 = 1 - b2 ** count.astype(jnp.float32)
        learning_rate = self.schedule(state.updates)

        def update(p: jax.Array, m: jax.Array, v: jax.Array, decayed: bool) -> jax.Array:
            step = (m / bias1) / (jnp.sqrt(v / bias2) + self.eps)
            if decayed:
                step = step + self.weight_decay * p
            return jnp.where(finite, p - learning_rate * step, p)

        new_params = jax.tree.map(update, params, mu, nu, decay_mask(params))
        return new_params, AdamWState(jnp.where(finite, count, state.updates), mu, nu)


def make_optimizer(config: TrainConfig) -> Optimizer:
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        return FusedAdamW(
            schedule, config.b1, config.b2, config.eps, config.weight_decay, config.grad_clip_norm
        )
    if config.optimizer == "lamb":
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
    return OptaxOptimizer(tx)
