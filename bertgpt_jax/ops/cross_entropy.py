"""Cross-entropy kernels with written-out backwards: `cross_entropy` over given logits, and
`tied_head_nll`, the tied output projection and the loss as one operation (its measured effect
is in benchmarks/KERNELS.md). Both give sums (`LossSums`): the weighted loss sum, the weight
sum and the weighted count of correct argmax predictions, reduced once, at the end (over
microbatches, devices and evaluation batches), so a mean is never averaged twice. Log-softmax
runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bertgpt_jax.ops.matmul import cpu_layout_barrier, swap_last

Array = jax.Array


class LossSums(NamedTuple):
    loss_sum: Array
    weight_sum: Array
    correct_sum: Array

    def mean(self) -> Array:
        return self.loss_sum / jnp.maximum(self.weight_sum, 1e-8)

    def accuracy(self) -> Array:
        return self.correct_sum / jnp.maximum(self.weight_sum, 1e-8)


@jax.custom_vjp
def _token_nll(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Per-row negative log-likelihood of `labels` and the gap from the row maximum to the
    label's logit (0 when the label is the argmax), in float32.

    Written with its own backward, softmax(logits) - onehot(labels), computed in one pass from
    the saved logits and log-normaliser: autodiff of log_softmax + gather stores the full
    log-probabilities and adds a scatter into a zero [..., V] array, several extra passes over
    the largest activation of a GPT step."""
    nll, gap, _ = _nll_forward(logits, labels)
    return nll, gap


def _nll_forward(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
    row_max = logits.max(axis=-1)
    lse = row_max + jnp.log(jnp.exp(logits - row_max[..., None]).sum(axis=-1))
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return lse - label_logit, row_max - label_logit, lse


def _token_nll_fwd(logits: Array, labels: Array) -> tuple[tuple[Array, Array], tuple]:
    nll, gap, lse = _nll_forward(logits, labels)
    return (nll, gap), (logits, labels, lse)


def _token_nll_bwd(res: tuple, cotangents: tuple[Array, Array]) -> tuple[Array, None]:
    logits, labels, lse = res
    g_nll, _ = cotangents  # the max gap only feeds the (non-differentiated) accuracy
    onehot = labels[..., None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)
    grad = (jnp.exp(logits - lse[..., None]) - onehot) * g_nll[..., None]
    return grad, None


_token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


def cross_entropy(logits: Array, labels: Array, weights: Array) -> LossSums:
    nll, gap = _token_nll(logits.astype(jnp.float32), labels.astype(jnp.int32))
    weights = weights.astype(jnp.float32)
    # Correct when the label's score is the row maximum (gap 0): a max-reduction rather than
    # an argmax, which reduces value-index pairs; a tie for the maximum counts as correct.
    correct = (gap <= 0).astype(jnp.float32)
    return LossSums((nll * weights).sum(), weights.sum(), (correct * weights).sum())


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def tied_head_nll(
    dtype: str, valid: int, x: Array, table: Array, labels: Array
) -> tuple[Array, Array]:
    """Per-row NLL (and max gap) of `labels` under logits x @ table.T; table rows from `valid`
    on are vocabulary padding (model.vocab_multiple) and can never be predicted."""
    nll, gap, _ = _nll_forward(_head_logits(dtype, valid, x, table), labels)
    return nll, gap


def mask_padded_vocab(logits: Array, valid: int) -> Array:
    """logits [..., V_padded] with the columns from `valid` on at the float32 minimum: padded
    vocabulary rows get probability 0 (exactly, after exp) and are never an argmax."""
    if valid >= logits.shape[-1]:
        return logits
    column = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.where(column < valid, logits, jnp.finfo(jnp.float32).min)


def _head_logits(dtype: str, valid: int, x: Array, table: Array) -> Array:
    # [N, D] x [V, D] -> [N, V] float32
    logits = jnp.einsum(
        "xd,vd->xv", x.astype(dtype), table.astype(dtype), preferred_element_type=jnp.float32
    )
    return mask_padded_vocab(logits, valid)


def _tied_head_fwd(
    dtype: str, valid: int, x: Array, table: Array, labels: Array
) -> tuple[tuple, tuple]:
    logits = _head_logits(dtype, valid, x, table)
    nll, gap, lse = _nll_forward(logits, labels)
    # Zero-size markers carry the input dtypes (residuals must be arrays).
    markers = (jnp.zeros(0, x.dtype), jnp.zeros(0, table.dtype))
    return (nll, gap), (logits, lse, labels, x.astype(dtype), table.astype(dtype), markers)


def _tied_head_bwd(dtype: str, valid: int, res: tuple, cotangents: tuple[Array, Array]) -> tuple:
    logits, lse, labels, xc, tc, (x_marker, t_marker) = res
    g_nll, _ = cotangents  # the max gap only feeds the (non-differentiated) accuracy
    # d nll / d logits = softmax - onehot(label), times each row's cotangent. The softmax part
    # is one elementwise pass over [N, V] straight into the compute dtype; the one-hot part
    # only touches each row's label, so it is applied to the two products directly:
    # dx -= g * table[label] (a gather of N rows), dtable[label] -= g * x (a scatter-add).
    probs = (jnp.exp(logits - lse[:, None]) * g_nll[:, None]).astype(dtype)  # [N, V]
    dx = jnp.einsum("xv,vd->xd", probs, tc, preferred_element_type=jnp.float32)  # [N, D]
    dx = dx - g_nll[:, None] * tc[labels].astype(jnp.float32)
    dtable_t = jnp.einsum("dx,xv->dv", swap_last(xc), probs, preferred_element_type=jnp.float32)
    # The barrier keeps XLA:CPU from folding the transpose into the matmul (a [V, D] result
    # with the gradient contracted along its leading axis, a layout it runs in float32 only).
    dtable = cpu_layout_barrier(dtable_t).T  # [V, D]
    dtable = dtable.at[labels].add(-g_nll[:, None] * xc.astype(jnp.float32))
    return dx.astype(x_marker.dtype), dtable.astype(t_marker.dtype), None


tied_head_nll.defvjp(_tied_head_fwd, _tied_head_bwd)
