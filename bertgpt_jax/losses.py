"""Loss functions, one per objective, kept apart from the models.

Each is a pure function of logits, labels and weights and returns sums (`LossSums`): the
weighted loss sum, the weight sum and the weighted count of correct argmax predictions. Sums
are reduced once, at the end (over microbatches, devices and evaluation batches), so a mean is
never averaged twice. Log-softmax runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class LossSums(NamedTuple):
    loss_sum: Array
    weight_sum: Array
    correct_sum: Array

    def mean(self) -> Array:
        return self.loss_sum / jnp.maximum(self.weight_sum, 1e-8)

    def accuracy(self) -> Array:
        return self.correct_sum / jnp.maximum(self.weight_sum, 1e-8)


def _cross_entropy(logits: Array, labels: Array, weights: Array) -> LossSums:
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    label_log_prob = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
    nll = -label_log_prob[..., 0]
    weights = weights.astype(jnp.float32)
    # Correct when the label's score is the maximum: a max-reduction rather than an argmax
    # (which reduces value-index pairs); a tie for the maximum counts as correct.
    correct = (label_log_prob[..., 0] >= log_probs.max(axis=-1)).astype(jnp.float32)
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
