"""GPT packing: the windows tile the EOS-joined document stream exactly; segments and positions."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from test_data_shared import default_store, gpt_config, store_of

from bertgpt_jax.data.pipeline import BatchSource
from bertgpt_jax.data.store import open_store
from bertgpt_jax.data.tokenizers.sentencepiece import EOT_ID, PAD_ID


def _stream(store, split="train"):
    """The split's documents joined with <|endoftext|> after each, as a flat array."""
    arrays = open_store(store).split(split)
    starts, ends = arrays.document_token_bounds()
    pieces = []
    for start, end in zip(starts, ends, strict=True):
        pieces += [np.asarray(arrays.tokens[start:end], np.int64), [EOT_ID]]
    return np.concatenate(pieces)


@pytest.fixture(scope="module")
def all_windows():
    source = BatchSource(gpt_config(default_store()))
    windows = source.builder.build(np.arange(source.examples_per_epoch))
    return windows, source


def test_windows_tile_the_stream_and_targets_shift_by_one(all_windows):
    windows, source = all_windows
    length = 64
    stream = _stream(default_store())
    assert source.examples_per_epoch == (len(stream) - 1) // length
    inputs, targets = windows["input_ids"], windows["targets"]
    assert (inputs.reshape(-1) == stream[: inputs.size]).all()
    assert (targets.reshape(-1) == stream[1 : inputs.size + 1]).all()
    assert (inputs[:, 1:] == targets[:, :-1]).all()
    assert (windows["loss_weights"] == 1).all() and (windows["segment_ids"] == 1).all()
    assert (windows["positions"] == np.arange(length)).all()
    assert {k: v.dtype for k, v in windows.items()} == {
        "input_ids": np.int32,
        "targets": np.int32,
        "loss_weights": np.float32,
        "segment_ids": np.int32,
        "positions": np.int32,
    }


def test_document_attention_numbers_documents_and_restarts_positions():
    source = BatchSource(gpt_config(default_store(), document_attention=True))
    batch = source.builder.build(np.arange(source.examples_per_epoch))
    ids, segments, positions = batch["input_ids"], batch["segment_ids"], batch["positions"]
    assert (segments[:, 0] == 1).all() and (positions[:, 0] == 0).all()
    after_eot = ids[:, :-1] == EOT_ID  # the token after <|endoftext|> starts a new document
    step = np.diff(segments, axis=1)
    assert (step == after_eot).all()
    assert (positions[:, 1:] == np.where(after_eot, 0, positions[:, :-1] + 1)).all()
    assert after_eot.sum() > 200  # the checks above saw many document starts


def test_corpus_shorter_than_a_window_is_padded_with_zero_weights():
    store = store_of((("A tiny document.",), ("And another one.",)))
    for attention in (False, True):
        source = BatchSource(gpt_config(store, document_attention=attention))
        assert source.examples_per_epoch == 1
        batch = source.batch(0)
        real = len(_stream(store))
        assert batch["input_ids"].shape == (8, 64)
        row = {k: v[0] for k, v in batch.items()}
        assert (row["input_ids"][real:] == PAD_ID).all() and (row["segment_ids"][real:] == 0).all()
        assert (row["loss_weights"] == (np.arange(64) < real - 1)).all()
        assert (row["targets"][: real - 1] == _stream(store)[1:]).all()
        expected_segments = 2 if attention else 1
        assert row["segment_ids"][real - 1] == expected_segments


def test_an_epoch_visits_windows_without_repeats(all_windows):
    windows, _ = all_windows
    source = BatchSource(gpt_config(default_store(), batch_size=64))
    n = source.examples_per_epoch
    seen = np.concatenate([source.batch(step)["input_ids"] for step in range(n // 64)])
    available = collections.Counter(row.tobytes() for row in windows["input_ids"])
    visited = collections.Counter(row.tobytes() for row in seen)
    assert not visited - available  # a sub-multiset of the epoch's windows: nothing twice
    assert len(seen) > 0.9 * n
