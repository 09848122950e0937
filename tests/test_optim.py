"""optim.FusedAdamW is optax's clip_by_global_norm + adamw, step for step, and keeps the state
unchanged on a non-finite step; the optax-backed optimizers keep it too."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertgpt_jax.core.config import TrainConfig
from bertgpt_jax.training.optim import (
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
        ours, state = apply(grads, state, ours, optax.global_norm(grads), jnp.asarray(True))
        updates, ref_state = reference.update(grads, ref_state, theirs)
        theirs = optax.apply_updates(theirs, updates)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(state.updates) == 6


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_non_finite_step_keeps_parameters_and_state(name):
    optimizer = make_optimizer(dataclasses.replace(TrainConfig(), optimizer=name))
    params = _params()
    state = optimizer.init(params)
    grads = _grads(0, 1.0)
    params, state = optimizer.apply(grads, state, params, optax.global_norm(grads), True)
    poisoned = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads)
    new_params, new_state = optimizer.apply(
        poisoned, state, params, optax.global_norm(poisoned), jnp.asarray(False)
    )
    for a, b in zip(
        jax.tree.leaves((new_params, new_state)), jax.tree.leaves((params, state)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
