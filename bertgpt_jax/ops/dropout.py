"""Dropout whose keep mask is a counter-based hash of each element's global index.

jax.random.bernoulli's threefry was the largest non-matmul cost of a CPU training step (see
benchmarks/KERNELS.md); a few integer ops per element fuse into the select instead. Being a
function of the global index, the mask does not depend on how the array is sharded, so a
(2,2,2) mesh draws the single-device masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _fmix32(x: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection that mixes every input bit into every
    output bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout. The keep mask is a counter-based hash of each element's index under
    two 32-bit words drawn from `key` (two keyed finaliser rounds, in the spirit of Philox):
    a few integer ops per element that XLA fuses into the select, where jax.random.bernoulli's
    threefry was the largest non-matmul cost of a CPU training step. Being a function of the
    global index, the mask does not depend on how the array is sharded."""
    if key is None or rate == 0.0:
        return x
    k = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0)
    for dim in range(1, x.ndim):
        index = index * jnp.uint32(x.shape[dim]) + jax.lax.broadcasted_iota(
            jnp.uint32, x.shape, dim
        )
    bits = _fmix32(_fmix32(index + k[0]) ^ k[1])
    keep = bits >= jnp.uint32(round(rate * 2**32))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_key(key: Array | None, n: int) -> list[Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))
