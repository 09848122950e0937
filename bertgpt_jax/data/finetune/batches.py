"""Fixed-shape fine-tuning rows -> the batches of the pretraining pipeline's contract.

Training: the global batch at step s holds global indices s*B .. s*B + B - 1; index g is
position g mod N of epoch g div N, mapped to a row by that epoch's permutation
(`sampling.epoch_order`), so the batch is a pure function of (data.seed, s), a resume needs
nothing but s, and process k of n takes rows [k B/n, (k+1) B/n) of it.

Evaluation: every row once, in order, ceil(N / B) batches; the last is padded with copies of
row 0 whose `example_weights` are 0, so nothing is dropped and padding counts for nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import numpy as np

from bertgpt_jax.data.sampling import epoch_order

Batch = dict[str, np.ndarray]


def _host_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def train_rows(rows: Mapping[str, np.ndarray], step: int, batch_size: int, seed: int) -> np.ndarray:
    """Row ids [B] of the global batch at `step`."""
    n = len(next(iter(rows.values())))
    g = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, positions = g // n, g % n
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        at = epochs == epoch
        out[at] = epoch_order(seed, int(epoch), n, positions[at])
    return out


def train_batches(
    rows: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """This process's rows of the global training batches from `start_step` on (endless)."""
    mine = _host_slice(batch_size, process_index, process_count)
    for step in itertools.count(start_step):
        ids = train_rows(rows, step, batch_size, seed)[mine]
        batch = {k: v[ids] for k, v in rows.items()}
        batch["example_weights"] = np.ones(len(ids), np.float32)
        yield batch


def eval_batches(
    rows: Mapping[str, np.ndarray], batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """Every row once in order, the last batch padded (weights 0); this process's part."""
    n = len(next(iter(rows.values())))
    mine = _host_slice(batch_size, process_index, process_count)
    for start in range(0, n, batch_size):
        ids = np.arange(start, start + batch_size)
        real = ids < n
        ids = np.where(real, ids, 0)[mine]
        batch = {k: v[ids] for k, v in rows.items()}
        batch["example_weights"] = real[mine].astype(np.float32)
        yield batch
