"""Learning-rate schedules and optimizers: AdamW, LAMB (large-batch BERT, You et al. 2020) and
Adafactor, each behind global-norm clipping, with weight decay masked off biases and LayerNorm
parameters (as google-research/bert's `exclude_from_weight_decay`).

Every optimizer is an `Optimizer`: `init(params) -> state` and `apply(grads, state, params,
grad_norm, finite) -> (params, state, applied)`. The update is applied only when `finite` (loss and
gradient norm) holds and it leaves every parameter and moment finite; otherwise parameters and
state come back bit for bit as they were and `applied` is False, so nothing non-finite ever
reaches the training state (or a checkpoint). LAMB and Adafactor are optax's, guarded by an
all-finite probe of the new values and a select between new and old. AdamW is written out
(`FusedAdamW`, the same update as `optax.chain(clip_by_global_norm, adamw)`) so that each tensor
takes one pass per output, written in place, and proves its update finite before writing it
(see `FusedAdamW.apply`): optax's chain, followed by the non-finite select, makes XLA recompute
the new moments inside the parameter update, which needs copies of the old moments and a
materialised clipped gradient (figures in benchmarks/KERNELS.md).
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
    ) -> tuple[Any, Any, jax.Array]: ...


def all_finite(tree: Any) -> jax.Array:
    """bool []: every element of every floating-point leaf of `tree` is finite (integer leaves
    such as step counters are finite by construction). `sum(x * 0)` is 0 for finite `x` and NaN
    otherwise (0 * inf and 0 * NaN are NaN; IEEE rules keep XLA from folding the product): an
    add-reduction, which XLA's CPU backend vectorises, about as fast as one elementwise pass,
    where `isfinite(x).all()`, a boolean reduction, takes the time of 3-4."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    probe = sum((jnp.sum(x * 0, dtype=jnp.float32) for x in leaves), jnp.zeros((), jnp.float32))
    return jnp.isfinite(probe)


def _keep(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


@dataclasses.dataclass(frozen=True)
class OptaxOptimizer:
    """An optax transformation, guarded by an all-finite probe of its new parameters and state
    and a select between new and old."""

    tx: optax.GradientTransformation

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def apply(
        self, grads: Any, state: Any, params: Any, grad_norm: jax.Array, finite: jax.Array
    ) -> tuple[Any, Any, jax.Array]:
        updates, new_state = self.tx.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        applied = finite & all_finite((new_params, new_state))
        return _keep(applied, new_params, params), _keep(applied, new_state, state), applied


class AdamWState(NamedTuple):
    updates: jax.Array  # int32 [], updates applied so far
    mu: Any  # first moments, shaped like the parameters
    nu: Any  # second moments


class _StepScalars(NamedTuple):
    scale: jax.Array  # the clipping factor of the gradient, <= 1
    learning_rate: jax.Array
    bias1: jax.Array  # Adam's bias corrections, 1 - b**count
    bias2: jax.Array


# FusedAdamW's update provably leaves every value finite while its bound stays under 2**100, a
# factor 2**28 below float32's largest number: each of the update's few roundings moves a value by
# a relative 2**-24 at most, so no computed value can pass the real-number bound by that much.
_BOUND_LIMIT = 2.0**100


def _peak(p: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
    """>= every |p|, |m| and v of a tensor (a sum of non-negative terms is at least each term);
    NaN where some value is NaN or some v < 0 (sqrt(v), as the update's square root would be).
    One add-reduction over the three tensors, which XLA:CPU fuses whole, reading each once (a
    select or comparison in it would cost a materialised intermediate)."""
    return jnp.sum(jnp.abs(p) + jnp.abs(m) + v + jnp.sqrt(v), dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
    """AdamW (Loshchilov & Hutter) behind global-norm clipping, as optax's, in three passes per
    tensor: new first moment, new second moment, then the parameter from those two; the barrier
    between makes the parameter pass read the new moments instead of recomputing them from old
    ones XLA would then have to copy. Each pass writes in place, keeping the old value where the
    update is not applied; whether it is applied is decided before, from the old state."""

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
    ) -> tuple[Any, AdamWState, jax.Array]:
        """Applied when `finite` holds and the new parameters and moments are finite. That is
        settled before anything is written, so the passes can write in place (a probe of the new
        values followed by a select between new and old reads and writes every tensor twice
        more): `_bounded` proves it from one reduction over the old state, and only where that
        bound fails (a learning rate or moments so large the update may overflow, eps = 0, a
        damaged state) is the update computed inside an all-finite reduction first."""
        k = self._scalars(state, grad_norm)
        decayed = decay_mask(params)

        def probe() -> jax.Array:
            def new(p: jax.Array, m: jax.Array, v: jax.Array, g: jax.Array, d: bool) -> tuple:
                m, v = self._first(m, g, k), self._second(v, g, k)
                return self._parameter(p, m, v, d, k), m, v

            return all_finite(jax.tree.map(new, params, state.mu, state.nu, grads, decayed))

        bounded = self._bounded(state, params, grad_norm * k.scale, k)
        needs_probe = finite & jnp.logical_not(bounded)
        applied = finite & jax.lax.cond(needs_probe, probe, lambda: jnp.asarray(True))
        mu = jax.tree.map(lambda m, g: jnp.where(applied, self._first(m, g, k), m), state.mu, grads)
        nu = jax.tree.map(
            lambda v, g: jnp.where(applied, self._second(v, g, k), v), state.nu, grads
        )
        mu, nu = jax.lax.optimization_barrier((mu, nu))
        new_params = jax.tree.map(
            lambda p, m, v, d: jnp.where(applied, self._parameter(p, m, v, d, k), p),
            params, mu, nu, decayed,
        )  # fmt: skip
        count = jnp.where(applied, optax.safe_int32_increment(state.updates), state.updates)
        return new_params, AdamWState(count, mu, nu), applied

    def _scalars(self, state: AdamWState, grad_norm: jax.Array) -> _StepScalars:
        scale = jnp.ones((), jnp.float32)
        if self.clip_norm > 0:  # as optax.clip_by_global_norm
            scale = jnp.where(grad_norm < self.clip_norm, 1.0, self.clip_norm / grad_norm)
        count = optax.safe_int32_increment(state.updates).astype(jnp.float32)
        return _StepScalars(
            scale, self.schedule(state.updates), 1 - self.b1**count, 1 - self.b2**count
        )

    def _first(self, m: jax.Array, g: jax.Array, k: _StepScalars) -> jax.Array:
        return self.b1 * m + (1 - self.b1) * (g * k.scale)

    def _second(self, v: jax.Array, g: jax.Array, k: _StepScalars) -> jax.Array:
        return self.b2 * v + (1 - self.b2) * jnp.square(g * k.scale)

    def _parameter(
        self, p: jax.Array, m: jax.Array, v: jax.Array, decayed: bool, k: _StepScalars
    ) -> jax.Array:
        step = (m / k.bias1) / (jnp.sqrt(v / k.bias2) + self.eps)
        if decayed:
            step = step + self.weight_decay * p
        return p - k.learning_rate * step

    def _bounded(
        self, state: AdamWState, params: Any, clipped_norm: jax.Array, k: _StepScalars
    ) -> jax.Array:
        """bool []: every value the update computes is provably finite. With P >= |p|, |m|, v
        everywhere (`_peak`, which also rules out v < 0) and G = clipped_norm + 1 >= |g * scale|
        everywhere (a sum of squares is at least each square; the + 1 covers gradients too small
        for their square to count, flushed to zero), the new moments and parameters satisfy
        |m'| / bias1 <= (b1 P + (1 - b1) G) / bias1 = M, 0 <= v' / bias2 <= (b2 P + (1 - b2) G^2)
        / bias2, and, as sqrt(v' / bias2) + eps >= eps, |p'| <= P + lr (M / eps + wd P). A NaN
        or infinite bound (eps = 0, an overflowing lr * M / eps) proves nothing: False."""
        peak = sum(jax.tree.leaves(jax.tree.map(_peak, params, state.mu, state.nu)))
        g = clipped_norm + 1.0
        first = (self.b1 * peak + (1 - self.b1) * g) / k.bias1
        second = (self.b2 * peak + (1 - self.b2) * jnp.square(g)) / k.bias2
        param = peak + k.learning_rate * (first / self.eps + self.weight_decay * peak)
        return jnp.maximum(jnp.maximum(first, second), param) < _BOUND_LIMIT


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
