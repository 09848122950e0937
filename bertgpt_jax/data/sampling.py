"""Counter-based randomness: which example a global index names, and that example's random draws.

Both are pure functions of their arguments, never of iteration history, which is what makes a
batch a function of (seed, step) alone: resuming needs no saved iterator state, and any process
can compute any row.

* `epoch_order` maps the position `i` of an example within epoch `e` to an example id through a
  pseudo-random permutation of [0, n): a 6-round Feistel network on the smallest even-bit
  power-of-two domain >= n, with cycle walking back into [0, n). Unlike a stored permutation it
  costs O(batch) memory and time at any step of any epoch, whatever the corpus size.
* `example_uniforms` draws each example's uniform numbers from Philox (Salmon et al. 2011,
  "Parallel random numbers: as easy as 1, 2, 3"), keyed by (seed, stream) with the counter
  starting at (0, index, epoch): a different, reproducible stream per example and epoch.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_ROUNDS = 6


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al. 2014): a bijective, well-mixing uint64 hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> np.ndarray:
    base = np.array([seed & _MASK64], np.uint64)
    keys = _mix64(base ^ _mix64(np.array([(epoch & _MASK64) ^ 0x9E3779B97F4A7C15], np.uint64)))
    return _mix64(keys + np.arange(1, _ROUNDS + 1, dtype=np.uint64))


def epoch_order(seed: int, epoch: int, n: int, positions: np.ndarray) -> np.ndarray:
    """Example ids at `positions` (each in [0, n)) of epoch `epoch`'s permutation of [0, n)."""
    positions = np.asarray(positions, np.int64)
    if n <= 1:
        return np.zeros_like(positions)
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    half_mask = np.uint64((1 << half_bits) - 1)
    keys = _round_keys(seed, epoch)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half_bits), x & half_mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & half_mask)
        return (left << np.uint64(half_bits)) | right

    out = feistel(positions.astype(np.uint64))
    # Cycle walking: a permutation of the power-of-two domain restricted to [0, n) by applying
    # it again to anything that lands outside; the domain is < 4n, so this ends quickly.
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = feistel(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


def example_uniforms(
    seed: int, stream: int, epochs: np.ndarray, indices: np.ndarray, count: int
) -> np.ndarray:
    """[B, count] float64 uniforms in [0, 1) for examples (epochs[b], indices[b])."""
    out = np.empty((len(indices), count), np.float64)
    key = [seed & _MASK64, stream & _MASK64]
    for row, (epoch, index) in enumerate(zip(epochs.tolist(), indices.tolist(), strict=True)):
        bit_generator = np.random.Philox(counter=[0, index & _MASK64, epoch & _MASK64, 0], key=key)
        out[row] = np.random.Generator(bit_generator).random(count)
    return out
