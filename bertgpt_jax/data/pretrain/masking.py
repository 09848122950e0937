"""Masked-LM corruption of a batch of BERT rows, vectorised over the batch.

The recipe of google-research/bert (`create_masked_lm_predictions`), with its numbers:

* per row, n = min(P, max(1, round(masked_lm_prob * E))) positions are chosen uniformly among
  the E eligible tokens (real, non-special) — the 15% rule, capped at max_predictions_per_seq;
* of the chosen positions, 80% become [MASK], 10% a random token and 10% keep the original;
  the random token is uniform over the non-special ids;
* whole-word masking chooses words instead (a word is a piece that starts a word, by the
  tokenizer's word-start table, plus the continuation pieces after it), visiting words in random order and
  taking each one that still fits in n, as the original does; the 80/10/10 draw stays per token.

All randomness comes in as per-position uniforms, so the result is a pure function of them.
"""

from __future__ import annotations

import numpy as np


def _num_predictions(eligible: np.ndarray, masked_lm_prob: float, cap: int) -> np.ndarray:
    """[B] how many positions to predict in each row."""
    count = eligible.sum(axis=1)
    wanted = np.maximum(1, np.rint(count * masked_lm_prob).astype(np.int64))
    return np.minimum(np.minimum(wanted, cap), count)


def _choose_tokens(eligible: np.ndarray, priority: np.ndarray, n: np.ndarray) -> np.ndarray:
    """[B, L] bool: the n eligible positions of lowest priority in each row."""
    order = np.argsort(np.where(eligible, priority, 2.0), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    return rank < n[:, None]


def _choose_words(
    eligible: np.ndarray, starts_word: np.ndarray, priority: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """[B, L] bool: whole words, in random order, each taken if it still fits in n tokens."""
    batch, length = eligible.shape
    previous = np.pad(eligible, ((0, 0), (1, 0)))[:, :-1]
    word_start = eligible & (starts_word | ~previous)
    word_of = np.cumsum(word_start, axis=1) - 1  # word index within the row
    flat_word = (np.arange(batch)[:, None] * length + word_of)[eligible]
    word_len = np.bincount(flat_word, minlength=batch * length).reshape(batch, length)
    word_priority = np.full((batch, length), 2.0)
    starts = np.nonzero(word_start)
    word_priority[starts[0], word_of[starts]] = priority[starts]
    order = np.argsort(word_priority, axis=1, kind="stable")
    taken = np.zeros((batch, length), bool)
    filled = np.zeros(batch, np.int64)
    rows = np.arange(batch)
    for k in range(int(word_start.sum(axis=1).max(initial=0))):
        size = word_len[rows, order[:, k]]
        take = (size > 0) & (filled + size <= n)
        taken[rows, order[:, k]] = take
        filled += np.where(take, size, 0)
    return eligible & np.take_along_axis(taken, np.maximum(word_of, 0), axis=1)


def mask_tokens(
    input_ids: np.ndarray,
    eligible: np.ndarray,
    uniforms: np.ndarray,
    *,
    masked_lm_prob: float,
    max_predictions: int,
    mask_id: int,
    replacements: np.ndarray,
    word_starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Corrupts `input_ids` [B, L] and returns the masked-LM batch entries.

    `eligible` [B, L] marks the tokens that may be chosen; `uniforms` [B, 3L] holds each
    position's choice priority, its 80/10/10 draw and its random-token draw; `mask_id` is the
    [MASK] id and `replacements` the ids a random replacement is drawn from (uniformly: every
    id but the special ones). `word_starts` [V]
    (from `Tokenizer.word_start_table`) turns on whole-word masking.
    Returns input_ids [B, L], mlm_positions / mlm_ids [B, P] int32, mlm_weights [B, P] float32;
    chosen positions are sorted, unused slots point at position 0 with weight 0.
    """
    batch, length = input_ids.shape
    priority, kind, replacement = np.split(uniforms[:, : 3 * length], 3, axis=1)
    n = _num_predictions(eligible, masked_lm_prob, max_predictions)
    if word_starts is None:
        chosen = _choose_tokens(eligible, priority, n)
    else:
        chosen = _choose_words(eligible, word_starts[input_ids], priority, n)
    random_ids = replacements[(replacement * len(replacements)).astype(np.int64)]
    corrupted = np.where(kind < 0.8, mask_id, np.where(kind < 0.9, random_ids, input_ids))
    masked_ids = np.where(chosen, corrupted, input_ids).astype(np.int32)

    # Sorted chosen positions first, then unused slots (position `length` sorts last).
    slots = np.sort(np.where(chosen, np.arange(length)[None, :], length), axis=1)
    slots = slots[:, :max_predictions]
    if slots.shape[1] < max_predictions:
        slots = np.pad(
            slots, ((0, 0), (0, max_predictions - slots.shape[1])), constant_values=length
        )
    used = slots < length
    positions = np.where(used, slots, 0)
    original = np.take_along_axis(input_ids, positions, axis=1)
    return {
        "input_ids": masked_ids,
        "mlm_positions": positions.astype(np.int32),
        "mlm_ids": np.where(used, original, 0).astype(np.int32),
        "mlm_weights": used.astype(np.float32),
    }
