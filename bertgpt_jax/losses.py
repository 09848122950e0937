"""Loss functions, one per objective, kept apart from the models.

Each is a pure function of logits, labels and weights and returns sums (`LossSums`): the
weighted loss sum, the weight sum and the weighted count of correct argmax predictions. Sums
are reduced once, at the end (over microbatches, devices and evaluation batches), so a mean is
never averaged twice. Log-softmax runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bertgpt_jax.model.layers import cpu_layout_barrier, swap_last

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


def _cross_entropy(logits: Array, labels: Array, weights: Array) -> LossSums:
    nll, gap = _token_nll(logits.astype(jnp.float32), labels.astype(jnp.int32))
    weights = weights.astype(jnp.float32)
    # Correct when the label's score is the row maximum (gap 0): a max-reduction rather than
    # an argmax, which reduces value-index pairs; a tie for the maximum counts as correct.
    correct = (gap <= 0).astype(jnp.float32)
    return LossSums((nll * weights).sum(), weights.sum(), (correct * weights).sum())


def masked_lm_loss(logits: Array, mlm_ids: Array, mlm_weights: Array) -> LossSums:
    """logits [B, P, V] at the masked positions; mlm_ids [B, P]; mlm_weights [B, P] (0 = pad)."""
    return _cross_entropy(logits, mlm_ids, mlm_weights)


def next_sentence_loss(logits: Array, nsp_labels: Array, weights: Array | None = None) -> LossSums:
    """logits [B, 2]; nsp_labels [B] (0 = IsNext, 1 = NotNext, as in BERT); weights [B]."""
    if weights is None:
        weights = jnp.ones(nsp_labels.shape, jnp.float32)
    return _cross_entropy(logits, nsp_labels, weights)


def causal_lm_loss(logits: Array, targets: Array, loss_weights: Array) -> LossSums:
    """logits [B, L, V] for the next token; targets [B, L]; loss_weights [B, L] (0 = pad)."""
    return _cross_entropy(logits, targets, loss_weights)


def tied_causal_lm_loss(
    hidden: Array, table: Array, targets: Array, loss_weights: Array, dtype: str
) -> LossSums:
    """`causal_lm_loss` of the tied output projection `hidden @ table.T`, as one operation.

    hidden [B, L, D] final hidden states; table [V, D] the token embeddings; targets and
    loss_weights [B, L]; dtype the matmul input dtype. The same sums as projecting with
    `Embeddings.attend` and calling `causal_lm_loss`, but the backward is written for the pair:
    the softmax part of the [B*L, V] logit gradient is produced in one pass, directly in the
    compute dtype, and the one-hot part is applied to the two products at the B*L labels only
    (so it is never rounded to bf16); the table's gradient is computed transposed
    ([D, V] = hidden^T @ grad), so only the small hidden states are transposed, never the
    [B*L, V] gradient. On a small GPT (4 x 256, vocab
    8192, 2048 tokens) the head is a third of the step's FLOPs and most of its memory traffic.
    """
    d = hidden.shape[-1]
    nll, gap = _tied_head_nll(
        jnp.dtype(dtype).name, hidden.reshape(-1, d), table, targets.reshape(-1).astype(jnp.int32)
    )
    weights = loss_weights.reshape(-1).astype(jnp.float32)
    correct = (gap <= 0).astype(jnp.float32)
    return LossSums((nll * weights).sum(), weights.sum(), (correct * weights).sum())


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tied_head_nll(dtype: str, x: Array, table: Array, labels: Array) -> tuple[Array, Array]:
    nll, gap, _ = _nll_forward(_head_logits(dtype, x, table), labels)
    return nll, gap


def _head_logits(dtype: str, x: Array, table: Array) -> Array:
    # [N, D] x [V, D] -> [N, V] float32
    return jnp.einsum(
        "xd,vd->xv", x.astype(dtype), table.astype(dtype), preferred_element_type=jnp.float32
    )


def _tied_head_fwd(dtype: str, x: Array, table: Array, labels: Array) -> tuple[tuple, tuple]:
    logits = _head_logits(dtype, x, table)
    nll, gap, lse = _nll_forward(logits, labels)
    # Zero-size markers carry the input dtypes (residuals must be arrays).
    markers = (jnp.zeros(0, x.dtype), jnp.zeros(0, table.dtype))
    return (nll, gap), (logits, lse, labels, x.astype(dtype), table.astype(dtype), markers)


def _tied_head_bwd(dtype: str, res: tuple, cotangents: tuple[Array, Array]) -> tuple:
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


_tied_head_nll.defvjp(_tied_head_fwd, _tied_head_bwd)
