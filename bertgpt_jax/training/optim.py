"""Learning-rate schedules and optimizers: AdamW, LAMB (large-batch BERT, You et al. 2020) and
Adafactor, each behind global-norm clipping, with weight decay masked off biases and LayerNorm
parameters (as google-research/bert's `exclude_from_weight_decay`).

Every optimizer is an `Optimizer`: `init(params) -> state`, `apply(grads, state, params,
grad_norm, finite) -> (params, state, applied)`, and `saved`/`restored` between a state and its
checkpointed form. The update is applied only when `finite` (loss and gradient norm) holds and it
leaves every parameter and moment finite; otherwise parameters and state come back bit for bit as
they were and `applied` is False, so nothing non-finite ever reaches the training state (or a
checkpoint). LAMB and Adafactor are optax's, guarded by an all-finite probe of the new values and
a select between new and old. AdamW is written out (`FusedAdamW`, the same update as
`optax.chain(clip_by_global_norm, adamw)`) so that each tensor takes one pass per output, written
in place, and proves its update finite before writing it, from three scalars it carries (see
`FusedAdamW.apply`): optax's chain, followed by the non-finite select, makes XLA recompute the new
moments inside the parameter update, which needs copies of the old moments and a materialised
clipped gradient (figures in benchmarks/KERNELS.md).
"""

from __future__ import annotations

import dataclasses
import functools
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

    def saved(self, state: Any) -> Any:
        """The state as a checkpoint holds it (values the next update re-derives left out)."""
        ...

    def restored(self, state: Any, params: Any) -> Any:
        """A full state from a saved one, or from one changed outside `apply`."""
        ...


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

    def saved(self, state: Any) -> Any:
        return state

    def restored(self, state: Any, params: Any) -> Any:
        return state

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
    # float32 [3]: upper bounds on every |parameter|, |first moment| and second moment, measured
    # where a state is made and carried from update to update (`FusedAdamW._propagate`); NaN or
    # inf: the state holds a value no update makes. Derived, so not checkpointed (None there).
    bounds: Any = None


class _StepScalars(NamedTuple):
    scale: jax.Array  # the clipping factor of the gradient, <= 1
    learning_rate: jax.Array
    bias1: jax.Array  # Adam's bias corrections, 1 - b**count
    bias2: jax.Array
    clipped_norm: jax.Array  # the norm of the clipped gradient


# FusedAdamW's update provably leaves every value finite while its bounds stay under 2**100, a
# factor 2**28 below float32's largest number.
_BOUND_LIMIT = 2.0**100
# Each carried bound is raised by this factor at every update. It covers the few roundings
# (a relative 2**-24 each) by which a computed value, or the bound itself, can pass its
# real-number bound, so the bounds hold over any number of updates.
_ROUNDING = 1.0 + 2.0**-20


@jax.jit  # one compiled program where a state is made outside jit (fine-tuning inits)
def _measure(params: Any, mu: Any, nu: Any) -> jax.Array:
    """float32 [3]: bounds on every |p|, |m| and v (each the largest of them all); NaN where
    some value is NaN or some v < 0 (its square root, as the update takes it, would be NaN),
    inf where one is infinite. One fused max-reduction per parameter (XLA's max propagates NaN),
    run where a state is made (`init`, `restored`) and where the bounds fail (the probe), not on
    an ordinary step."""

    def peak(p: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
        values = jnp.maximum(jnp.maximum(jnp.abs(p), jnp.abs(m)), v + 0 * jnp.sqrt(v))
        return jnp.max(values).astype(jnp.float32)

    peaks = jax.tree.leaves(jax.tree.map(peak, params, mu, nu))
    return jnp.full((3,), functools.reduce(jnp.maximum, peaks, jnp.zeros((), jnp.float32)))


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
    """AdamW (Loshchilov & Hutter) behind global-norm clipping, as optax's, in three passes per
    tensor: new first moment, new second moment, then the parameter from those two; the barrier
    between makes the parameter pass read the new moments instead of recomputing them from old
    ones XLA would then have to copy. Each pass writes in place, keeping the old value where the
    update is not applied; whether it is applied is decided before, from scalars carried in the
    state (`AdamWState.bounds`), so the guard reads no tensor at all on an ordinary step."""

    schedule: optax.Schedule
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float  # <= 0: no clipping

    def init(self, params: Any) -> AdamWState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        mu, nu = zeros(), zeros()
        return AdamWState(jnp.zeros((), jnp.int32), mu, nu, _measure(params, mu, nu))

    def saved(self, state: AdamWState) -> AdamWState:
        """The state as a checkpoint holds it: without the bounds, which `restored` measures."""
        return state._replace(bounds=None)

    def restored(self, state: AdamWState, params: Any) -> AdamWState:
        """A state read back from a checkpoint (`saved`), or changed outside `apply`, with its
        bounds measured (NaN where it holds a value no update makes: no update is then applied
        until the probe finds one finite)."""
        return state._replace(bounds=_measure(params, state.mu, state.nu))

    def apply(
        self, grads: Any, state: AdamWState, params: Any, grad_norm: jax.Array, finite: jax.Array
    ) -> tuple[Any, AdamWState, jax.Array]:
        """Applied when `finite` holds and the new parameters and moments are finite. That is
        settled before anything is written (`_decide`), so the passes can write in place: a
        probe of the new values followed by a select between new and old would read and write
        every tensor twice more."""
        k = self._scalars(state, grad_norm)
        decayed = decay_mask(params)
        applied, bounds = self._decide(grads, state, params, decayed, finite, k)
        new_params, mu, nu = self._update(grads, state, params, decayed, k, applied)
        count = jnp.where(applied, optax.safe_int32_increment(state.updates), state.updates)
        return new_params, AdamWState(count, mu, nu, bounds), applied

    def _update(
        self, grads: Any, state: AdamWState, params: Any, decayed: Any, k: _StepScalars,
        applied: jax.Array | bool,
    ) -> tuple[Any, Any, Any]:  # fmt: skip
        """(parameters, first moments, second moments) after the update, each the old value
        where `applied` is False."""
        mu = jax.tree.map(lambda m, g: jnp.where(applied, self._first(m, g, k), m), state.mu, grads)
        nu = jax.tree.map(
            lambda v, g: jnp.where(applied, self._second(v, g, k), v), state.nu, grads
        )
        mu, nu = jax.lax.optimization_barrier((mu, nu))
        new_params = jax.tree.map(
            lambda p, m, v, d: jnp.where(applied, self._parameter(p, m, v, d, k), p),
            params, mu, nu, decayed,
        )  # fmt: skip
        return new_params, mu, nu

    def _decide(
        self, grads: Any, state: AdamWState, params: Any, decayed: Any, finite: jax.Array,
        k: _StepScalars,
    ) -> tuple[jax.Array, jax.Array]:  # fmt: skip
        """(applied, the bounds of the state after the update). `_propagate` proves the new
        values finite from the carried bounds, in scalars; only where that proof fails (a
        learning rate or moments so large the update may overflow, eps = 0, a damaged state) are
        the new values computed and measured first, inside a `lax.cond`."""

        def probe() -> jax.Array:
            return _measure(*self._update(grads, state, params, decayed, k, True))

        bounds = self._propagate(state.bounds, k)
        proven = jnp.all(bounds < _BOUND_LIMIT)  # False where NaN
        bounds = jax.lax.cond(finite & jnp.logical_not(proven), probe, lambda: bounds)
        applied = finite & jnp.all(jnp.isfinite(bounds))
        return applied, jnp.where(applied, bounds, state.bounds)

    def _scalars(self, state: AdamWState, grad_norm: jax.Array) -> _StepScalars:
        scale = jnp.ones((), jnp.float32)
        if self.clip_norm > 0:  # as optax.clip_by_global_norm
            scale = jnp.where(grad_norm < self.clip_norm, 1.0, self.clip_norm / grad_norm)
        count = optax.safe_int32_increment(state.updates).astype(jnp.float32)
        return _StepScalars(
            scale,
            self.schedule(state.updates),
            1 - self.b1**count,
            1 - self.b2**count,
            grad_norm * scale,
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

    def _propagate(self, old: jax.Array, k: _StepScalars) -> jax.Array:
        """float32 [3]: bounds on the new |p|, |m| and v, given `old` = (P, M, V) bounds on the
        current ones (with v >= 0). Every |g * scale| <= G = (clipped_norm + 1)(1 + 2**-10) (a
        sum of squares is at least each square; the + 1 and the factor cover gradients flushed to
        zero and the norm's own roundings), so |m'| <= b1 M + (1 - b1) G, 0 <= v' <= b2 V +
        (1 - b2) G^2 and, as sqrt(v' / bias2) + eps >= eps, |p'| <= P + lr (M' / bias1 / eps +
        wd P). Each is raised by `_ROUNDING`. A NaN or infinite bound (eps = 0, an overflowing
        lr / eps) proves nothing, and neither does one at or over `_BOUND_LIMIT`."""
        p, m, v = old[0], old[1], old[2]
        g = (k.clipped_norm + 1.0) * (1.0 + 2.0**-10)
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * jnp.square(g)
        p = p + k.learning_rate * (m / k.bias1 / self.eps + self.weight_decay * p)
        return jnp.stack([p, m, v]).astype(jnp.float32) * _ROUNDING


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
