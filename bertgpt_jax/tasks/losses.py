"""Loss functions, one per objective, kept apart from the models: pure functions of logits (or
final hidden states and the tied table), labels and weights that return `LossSums`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bertgpt_jax.ops.cross_entropy import LossSums, cross_entropy, tied_head_nll

Array = jax.Array


def masked_lm_loss(logits: Array, mlm_ids: Array, mlm_weights: Array) -> LossSums:
    """logits [B, P, V] at the masked positions; mlm_ids [B, P]; mlm_weights [B, P] (0 = pad)."""
    return cross_entropy(logits, mlm_ids, mlm_weights)


def next_sentence_loss(logits: Array, nsp_labels: Array, weights: Array | None = None) -> LossSums:
    """logits [B, 2]; nsp_labels [B] (0 = IsNext, 1 = NotNext, as in BERT); weights [B]."""
    if weights is None:
        weights = jnp.ones(nsp_labels.shape, jnp.float32)
    return cross_entropy(logits, nsp_labels, weights)


def causal_lm_loss(logits: Array, targets: Array, loss_weights: Array) -> LossSums:
    """logits [B, L, V] for the next token; targets [B, L]; loss_weights [B, L] (0 = pad)."""
    return cross_entropy(logits, targets, loss_weights)


def tied_causal_lm_loss(
    hidden: Array,
    table: Array,
    targets: Array,
    loss_weights: Array,
    dtype: str,
    vocab_size: int | None = None,
) -> LossSums:
    """`causal_lm_loss` of the tied output projection `hidden @ table.T`, as one operation.

    hidden [B, L, D] final hidden states; table [V, D] the token embeddings; targets and
    loss_weights [B, L]; dtype the matmul input dtype; vocab_size the real vocabulary when the
    table is padded (rows from it on are never predicted). The same sums as projecting with
    `Embeddings.attend` and calling `causal_lm_loss`, but the backward is written for the pair:
    the softmax part of the [B*L, V] logit gradient is produced in one pass, directly in the
    compute dtype, and the one-hot part is applied to the two products at the B*L labels only
    (so it is never rounded to bf16); the table's gradient is computed transposed
    ([D, V] = hidden^T @ grad), so only the small hidden states are transposed, never the
    [B*L, V] gradient. On a small GPT (4 x 256, vocab
    8192, 2048 tokens) the head is a third of the step's FLOPs and most of its memory traffic.
    """
    d = hidden.shape[-1]
    nll, gap = tied_head_nll(
        jnp.dtype(dtype).name,
        table.shape[0] if vocab_size is None else vocab_size,
        hidden.reshape(-1, d),
        table,
        targets.reshape(-1).astype(jnp.int32),
    )
    weights = loss_weights.reshape(-1).astype(jnp.float32)
    correct = (gap <= 0).astype(jnp.float32)
    return LossSums((nll * weights).sum(), weights.sum(), (correct * weights).sum())


def sigmoid_cross_entropy(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy of each logit against a {0, 1} target (multi-label), elementwise,
    in float32 and stable for large |logits| (torch's BCEWithLogitsLoss)."""
    x = logits.astype(jnp.float32)
    return jnp.maximum(x, 0.0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x)))
