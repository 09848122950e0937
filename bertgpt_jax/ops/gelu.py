"""GELU in BERT's exact (erf) and GPT-2's tanh forms, with a written-out backward that saves
only its input (measured effect in benchmarks/KERNELS.md)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def activation(name: str, x: Array) -> Array:
    # BERT uses the exact erf GELU; GPT-2 the tanh approximation ("gelu_new").
    return _gelu(name == "gelu_tanh", x)


_SQRT_2_OVER_PI = (2 / math.pi) ** 0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gelu(tanh: bool, x: Array) -> Array:
    """GELU with a backward that keeps only its input: autodiff saves several float32
    intermediates of the activation's size ([B, L, F], the largest per layer), which a scanned
    layer stack copies into its loop buffers. The exact form is written with erf, as BERT and
    transformers define it (jax.nn.gelu(approximate=False) uses erfc, which XLA:CPU runs
    slower; both are within 1e-6 of float64)."""
    if tanh:
        return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + jax.lax.erf(x * 2**-0.5))


def _gelu_fwd(tanh: bool, x: Array) -> tuple[Array, Array]:
    return _gelu(tanh, x), x


def _gelu_bwd(tanh: bool, x: Array, g: Array) -> tuple[Array]:
    if tanh:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)
    cdf = 0.5 * (1.0 + jax.lax.erf(x * 2**-0.5))
    pdf = jnp.exp(-0.5 * x * x) * (2 * math.pi) ** -0.5
    return (g * (cdf + x * pdf),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)
