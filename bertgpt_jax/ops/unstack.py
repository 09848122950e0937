"""Unstacking a stacked parameter into its layers, for the unrolled layer loop, with a backward
that is one `stack` (measured effect in benchmarks/KERNELS.md)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def is_tuple(x: Any) -> bool:
    return isinstance(x, tuple)


@jax.custom_vjp
def unstack_layers(a: Array) -> tuple[Array, ...]:
    """The layers of a stacked parameter, for the unrolled loop. Its backward stacks the layer
    gradients (one concatenation); indexing `a[i]` instead sums num_layers zero-padded copies
    (XLA:CPU: a pass that reads every layer's gradient for each output element)."""
    return tuple(a[i] for i in range(a.shape[0]))


def unstack_layers_fwd(a: Array) -> tuple[tuple[Array, ...], None]:
    return unstack_layers(a), None


def unstack_layers_bwd(_: None, grads: tuple[Array, ...]) -> tuple[Array]:
    return (jnp.stack(grads),)


unstack_layers.defvjp(unstack_layers_fwd, unstack_layers_bwd)
