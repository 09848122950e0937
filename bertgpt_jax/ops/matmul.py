"""The low-precision matmul: inputs in the compute dtype, float32 accumulation, and a
written-out backward (`_BACKWARD`, one row per forward contraction) whose two matmuls also take
low-precision inputs. `cpu_layout_barrier`/`swap_last` are XLA:CPU-only layout measures
(identity on TPU and GPU); their measured effect is in benchmarks/KERNELS.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def matmul(eq: str, x: Array, w: Array, dtype: jnp.dtype) -> Array:
    """einsum with inputs in the compute dtype and a float32 result.

    In float32 this is a plain einsum. In a narrower dtype the backward pass is written out
    (`_low_precision_einsum`): JAX's own transpose would multiply the float32 cotangent with the
    bfloat16 operand, which XLA runs as a float32 matmul; here both backward matmuls take
    bfloat16 inputs and accumulate in float32, like the forward one (the rule on TPU and GPU;
    see benchmarks/KERNELS.md for CPUs), and the residuals are stored in bfloat16.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(eq, x, w, preferred_element_type=jnp.float32)
    return _low_precision_einsum(eq, jnp.dtype(dtype).name, x, w)


def _einsum_f32(eq: str, a: Array, b: Array) -> Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def cpu_layout_barrier(x: Array) -> Array:
    """`x`, kept by XLA:CPU in the layout it was computed in. XLA:CPU runs a bf16 matmul whose
    operand it has to transpose in float32 (it converts both inputs), so the written-out
    backward materialises its transposes and this barrier keeps XLA from folding them back into
    the matmul. TPU and GPU compilers fold transposes into their matmuls for free, so there it
    is the identity: a materialised copy would only cost memory. The backend is the one tracing, so `bertgpt compile` on a CPU
    host reports TPU memory with the barriers in: on the safe side."""
    if jax.default_backend() != "cpu":
        return x
    return jax.lax.optimization_barrier(x)


def swap_last(a: Array) -> Array:
    """a with its last two axes swapped, materialised in row-major order on CPU (see
    `cpu_layout_barrier`)."""
    *lead, m, n = a.shape
    flat = cpu_layout_barrier(jnp.swapaxes(a, -1, -2).reshape(-1))
    return flat.reshape(*lead, n, m)


# Backward of each forward contraction "X,W->Y" as (dX, dW): an einsum and its two operands
# ("g" the cotangent of Y, "x"/"w" the saved inputs, "T" the materialised swap), all in
# layouts whose matmuls XLA:CPU runs in bf16.
_BACKWARD = {
    # dense: Y[x,n] = X[x,z] W[z,n]
    "xz,zn->xn": (("xn,zn->xz", "g", "w"), ("zx,xn->zn", "Tx", "g")),
    # tied output head: Y[x,v] = X[x,d] E[v,d]
    "xd,vd->xv": (("xv,vd->xd", "g", "w"), ("vx,xd->vd", "Tg", "x")),
    # attention scores: S[b,h,q,s] = Q[b,q,h,k] K[b,s,h,k]
    "bqhk,bshk->bhqs": (("bhqs,bshk->bqhk", "g", "w"), ("bhqs,bqhk->bshk", "g", "x")),
    # attention context: O[b,q,h,k] = P[b,h,q,s] V[b,s,h,k]
    "bhqs,bshk->bqhk": (("bqhk,bshk->bhqs", "g", "w"), ("bhqs,bqhk->bshk", "x", "g")),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_einsum(eq: str, dtype: str, x: Array, w: Array) -> Array:
    return _einsum_f32(eq, x.astype(dtype), w.astype(dtype))


def _low_precision_fwd(eq: str, dtype: str, x: Array, w: Array) -> tuple[Array, tuple]:
    if eq not in _BACKWARD:
        raise ValueError(f"no low-precision backward for einsum {eq!r}; add it to _BACKWARD")
    xc, wc = x.astype(dtype), w.astype(dtype)
    # Zero-size markers carry the input dtypes (residuals must be arrays).
    return _einsum_f32(eq, xc, wc), (xc, wc, jnp.zeros(0, x.dtype), jnp.zeros(0, w.dtype))


def _low_precision_bwd(eq: str, dtype: str, res: tuple, g: Array) -> tuple[Array, Array]:
    xc, wc, x_marker, w_marker = res
    operands = {"x": xc, "w": wc, "g": g.astype(dtype)}

    def operand(name: str) -> Array:
        return swap_last(operands[name[1]]) if name.startswith("T") else operands[name]

    (eq_dx, a_dx, b_dx), (eq_dw, a_dw, b_dw) = _BACKWARD[eq]
    dx = _einsum_f32(eq_dx, operand(a_dx), operand(b_dx))
    dw = _einsum_f32(eq_dw, operand(a_dw), operand(b_dw))
    return dx.astype(x_marker.dtype), dw.astype(w_marker.dtype)


_low_precision_einsum.defvjp(_low_precision_fwd, _low_precision_bwd)
