"""optim.FusedAdamW is optax's clip_by_global_norm + adamw, step for step, and keeps the state
unchanged on a non-finite step, or a step whose update would overflow; the optax-backed optimizers
keep it too."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertgpt_jax.core.config import TrainConfig
from bertgpt_jax.training.optim import (
    AdamWState,
    FusedAdamW,
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
)


def _params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "layer": {
            "kernel": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(5), jnp.float32),
        },
        "norm": {"scale": jnp.ones(5, jnp.float32)},
    }


def _grads(step: int, size: float) -> dict:
    rng = np.random.default_rng(step + 1)
    return jax.tree.map(
        lambda p: jnp.asarray(size * rng.standard_normal(p.shape), jnp.float32), _params()
    )


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_fused_adamw_equals_optax_chain(clip):
    config = TrainConfig(learning_rate=1e-2, warmup_steps=2, steps=8, grad_clip_norm=clip)
    fused = make_optimizer(config)
    assert isinstance(fused, FusedAdamW)
    reference = optax.adamw(
        learning_rate_schedule(config), config.b1, config.b2, config.eps,
        weight_decay=config.weight_decay, mask=decay_mask,
    )  # fmt: skip
    if clip > 0:
        reference = optax.chain(optax.clip_by_global_norm(clip), reference)
    ours, theirs = _params(), _params()
    state, ref_state = fused.init(ours), reference.init(theirs)
    apply = jax.jit(fused.apply)
    for step in range(6):
        grads = _grads(step, size=3.0 if step % 2 else 0.1)  # clipped and unclipped steps
        ours, state, applied = apply(grads, state, ours, optax.global_norm(grads), True)
        assert bool(applied)
        updates, ref_state = reference.update(grads, ref_state, theirs)
        theirs = optax.apply_updates(theirs, updates)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(state.updates) == 6


def _peaks(params, state: AdamWState) -> np.ndarray:
    """The largest |p|, |m| and v."""
    return np.array(
        [max(float(jnp.abs(x).max()) for x in jax.tree.leaves(t)) for t in (params, *state[1:3])]
    )


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_fused_adamw_carries_bounds_that_hold(clip):
    """The bounds FusedAdamW carries from step to step are above every |p|, |m| and v after each
    of 30 steps with gradients from 0.01 to 100 that push every parameter away from zero (so the
    largest grows), and stay proven (under 2**100) without a probe: a probe would leave the
    measured maxima themselves, so the bounds stay strictly above them."""
    config = TrainConfig(learning_rate=1e-2, warmup_steps=3, steps=40, grad_clip_norm=clip)
    optimizer = make_optimizer(config)
    apply = jax.jit(optimizer.apply)
    params = _params()
    state = optimizer.init(params)
    np.testing.assert_array_equal(state.bounds, [_peaks(params, state).max()] * 3)  # measured
    for step in range(30):
        grads = _grads(step, size=10.0 ** (step % 5 - 2))
        grads = jax.tree.map(lambda g, p: -jnp.abs(g) * jnp.sign(p), grads, params)
        params, state, applied = apply(grads, state, params, optax.global_norm(grads), True)
        assert bool(applied)
        bounds = np.asarray(state.bounds)
        assert np.all(bounds > _peaks(params, state)) and np.all(bounds < 2.0**100), (step, bounds)
    assert optimizer.saved(state).bounds is None
    restored = optimizer.restored(optimizer.saved(state), params)
    np.testing.assert_array_equal(restored.bounds, [_peaks(params, state).max()] * 3)


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_non_finite_step_keeps_parameters_and_state(name):
    optimizer = make_optimizer(dataclasses.replace(TrainConfig(), optimizer=name))
    params = _params()
    state = optimizer.init(params)
    grads = _grads(0, 1.0)
    params, state, applied = optimizer.apply(grads, state, params, optax.global_norm(grads), True)
    assert bool(applied)
    poisoned = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads)
    new_params, new_state, applied = optimizer.apply(
        poisoned, state, params, optax.global_norm(poisoned), jnp.asarray(False)
    )
    assert not bool(applied)
    for a, b in zip(
        jax.tree.leaves((new_params, new_state)), jax.tree.leaves((params, state)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _assert_same(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_an_update_that_overflows_is_not_applied(name):
    """Finite gradients and a finite learning rate (1e37, as a config may say): the first update
    leaves the parameters near 1e37, still finite, and is applied (FusedAdamW: its bound fails,
    the probe passes); the second would overflow (weight decay alone is lr * wd * 1e37) and is
    not: parameters and state come back bit for bit."""
    config = TrainConfig(learning_rate=1e37, warmup_steps=0, optimizer=name, weight_decay=0.01)
    optimizer = make_optimizer(config)
    apply = jax.jit(optimizer.apply)
    params = _params()
    state = optimizer.init(params)
    grads = _grads(0, 1.0)
    params, state, applied = apply(grads, state, params, optax.global_norm(grads), True)
    assert bool(applied)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((params, state)))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(params)) > 1e30
    grads = _grads(1, 1.0)
    new_params, new_state, applied = apply(grads, state, params, optax.global_norm(grads), True)
    assert not bool(applied)
    _assert_same((new_params, new_state), (params, state))


def _damage(state: AdamWState, params, how: str) -> AdamWState:
    """A state changed outside `apply`, then declared so with `restored` (as a checkpoint's is)."""
    first = lambda tree, value: jax.tree.map(lambda x: x.at[0].set(value), tree)  # noqa: E731
    if how == "huge first moment":  # finite, but m / (sqrt(v) + eps) overflows
        state = state._replace(mu=first(state.mu, 3e38))
    elif how == "negative second moment":  # finite, but its square root is NaN
        state = state._replace(nu=first(state.nu, -1.0))
    else:
        state = state._replace(nu=first(state.nu, jnp.inf))
    return make_optimizer(TrainConfig()).restored(state, params)


@pytest.mark.parametrize("how", ["huge first moment", "negative second moment", "inf moment"])
def test_fused_adamw_does_not_apply_an_update_from_a_damaged_state(how):
    """States no FusedAdamW step makes (a restored or edited one could hold them): the bound
    proves nothing, the probe sees the non-finite result, nothing is written."""
    optimizer = make_optimizer(TrainConfig(warmup_steps=0))
    params = _params()
    grads = _grads(0, 1.0)
    _, state, _ = optimizer.apply(grads, optimizer.init(params), params, 1.0, True)
    state = _damage(state, params, how)
    new = jax.jit(optimizer.apply)(grads, state, params, optax.global_norm(grads), True)
    assert not bool(new[2])
    _assert_same(new[:2], (params, state))
