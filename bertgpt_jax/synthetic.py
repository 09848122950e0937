"""Synthetic batches with the real batch contract (for `bertgpt bench`, the ahead-of-time
compile check and tests): random tokens, BERT masking at fixed-count random positions."""

from __future__ import annotations

import numpy as np

from bertgpt_jax.config import Config


def synthetic_batch(config: Config, batch_size: int | None = None, seed: int = 0) -> dict:
    """One global batch of numpy arrays for `config`'s family."""
    rng = np.random.default_rng(seed)
    b = batch_size or config.train.batch_size
    length, vocab = config.data.seq_len, config.model.vocab_size
    ids = rng.integers(0, vocab, (b, length + 1), dtype=np.int32)
    batch = {
        "input_ids": ids[:, :-1],
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
        "segment_ids": np.ones((b, length), np.int32),
    }
    if config.model.family == "gpt":
        batch["targets"] = ids[:, 1:].copy()
        batch["loss_weights"] = np.ones((b, length), np.float32)
        return batch
    p = config.data.max_predictions_per_seq
    positions = np.sort(np.argsort(rng.random((b, length - 1)), axis=1)[:, :p] + 1, axis=1)
    batch["token_type_ids"] = (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(b, 0)
    batch["mlm_positions"] = positions.astype(np.int32)
    batch["mlm_ids"] = np.take_along_axis(batch["input_ids"], positions, axis=1)
    batch["mlm_weights"] = np.ones((b, p), np.float32)
    batch["nsp_labels"] = rng.integers(0, 2, (b,), dtype=np.int32)
    return batch
