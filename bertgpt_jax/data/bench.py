"""Throughput of the example builders on one CPU core: what `bertgpt data-bench` measures.

The builders run synchronously (no prefetch thread) with the process pinned to a single core, so
the numbers are per core; the training loop's prefetch thread adds a core's worth on top.
`tokens_per_s` counts every slot of every row (B x L), `real_tokens_per_s` only non-padding.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertgpt_jax.core.config import config_from_dict
from bertgpt_jax.data.pipeline import BatchSource
from bertgpt_jax.data.store import open_store


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Pins this process to one CPU core for the duration (where the OS allows it)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def _measure(source: BatchSource, seconds: float, min_steps: int = 3) -> dict[str, float]:
    source.batch(0)  # warm caches and page in the store
    steps = rows = real = 0
    start = time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        batch = source.batch(steps + 1)
        steps += 1
        rows += batch["input_ids"].shape[0]
        real += int((batch["segment_ids"] > 0).sum())
    elapsed = time.perf_counter() - start
    length = batch["input_ids"].shape[1]
    return {
        "seq_len": length,
        "batch_size": source.rows,
        "steps": steps,
        "examples_per_s": round(rows / elapsed, 1),
        "tokens_per_s": round(rows * length / elapsed, 1),
        "real_tokens_per_s": round(real / elapsed, 1),
    }


def run_benchmark(
    store: str | Path,
    *,
    batch_size: int = 32,
    seconds: float = 3.0,
    whole_word_masking: bool = False,
) -> dict[str, Any]:
    """BERT (seq 128, masking, NSP) and GPT (seq 1024, packed) examples/s and tokens/s."""
    vocab_size = open_store(store).identity.vocab_size
    bert = config_from_dict(
        {
            "model": {"family": "bert", "vocab_size": vocab_size},
            "data": {
                "path": str(store),
                "seq_len": 128,
                "max_predictions_per_seq": 20,
                "whole_word_masking": whole_word_masking,
            },
            "train": {"batch_size": batch_size},
        }
    )
    gpt = config_from_dict(
        {
            "model": {
                "family": "gpt",
                "vocab_size": vocab_size,
                "max_len": 1024,
                "norm_position": "pre",
            },
            "data": {"path": str(store), "seq_len": 1024},
            "train": {"batch_size": batch_size},
        }
    )
    with one_core():
        results = {
            "bert": _measure(BatchSource(bert), seconds),
            "gpt": _measure(BatchSource(gpt), seconds),
        }
    results["bert"]["whole_word_masking"] = whole_word_masking
    return {"store": str(store), "cores": 1, **results}
