"""The pipeline contract: batch = f(seed, step); process rows concatenate; exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_data_shared import (
    bert_config,
    default_store,
    gpt_config,
    store_of,
    with_data,
    workdir,
)

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data import host_batches, validation_batches
from bertgpt_jax.data.pipeline import BatchSource, _prefetch
from bertgpt_jax.data.sampling import epoch_order, example_uniforms
from bertgpt_jax.data.tokenizers.sentencepiece import train_tokenizer


def _take(iterator, count):
    batches = list(itertools.islice(iterator, count))
    iterator.close()
    return batches


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(params=["bert", "gpt"])
def config(request):
    store = default_store()
    if request.param == "bert":
        return bert_config(store, batch_size=16, prefetch=2)
    return gpt_config(store, batch_size=16, prefetch=2, document_attention=True)


def test_same_step_same_batch_and_steps_differ(config):
    first = _take(host_batches(config), 3)
    again = _take(host_batches(config), 3)
    assert all(_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0]["input_ids"], first[1]["input_ids"])
    other_seed = _take(host_batches(with_data(config, seed=1)), 1)[0]
    assert not np.array_equal(first[0]["input_ids"], other_seed["input_ids"])


@pytest.mark.parametrize("processes", [2, 4])
def test_process_rows_concatenate_to_the_global_batch(config, processes):
    whole = _take(host_batches(config, start_step=5), 2)
    parts = [
        _take(host_batches(config, start_step=5, process_index=k, process_count=processes), 2)
        for k in range(processes)
    ]
    for step in range(2):
        rows = [part[step] for part in parts]
        assert all(r["input_ids"].shape[0] == 16 // processes for r in rows)
        joined = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        assert _equal(joined, whole[step])


def test_start_step_reproduces_an_uninterrupted_run(config):
    run = _take(host_batches(config), 7)
    resumed = _take(host_batches(config, start_step=4), 3)
    assert all(_equal(a, b) for a, b in zip(run[4:], resumed, strict=True))


def test_prefetch_does_not_change_batches(config):
    threaded = _take(host_batches(config), 4)
    inline = _take(host_batches(with_data(config, prefetch=0)), 4)
    assert all(_equal(a, b) for a, b in zip(threaded, inline, strict=True))


def test_epochs_permute_examples_and_remask_them():
    n = 1000
    order = epoch_order(7, 0, n, np.arange(n))
    assert np.array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(order, epoch_order(7, 1, n, np.arange(n)))
    for size in (1, 2, 3, 31, 4097):
        assert np.array_equal(np.sort(epoch_order(0, 3, size, np.arange(size))), np.arange(size))
    source = BatchSource(bert_config(default_store()))
    ids = np.arange(64)
    draws = [
        example_uniforms(0, 1, np.full(64, e), ids, source.builder.num_uniforms) for e in (0, 1)
    ]
    epoch0, epoch1 = (source.builder.build(ids, u) for u in draws)
    assert not np.array_equal(epoch0["mlm_positions"], epoch1["mlm_positions"])


def test_batches_straddling_an_epoch_cover_it_exactly_once():
    documents = tuple((f"Document {i} has one sentence only.",) for i in range(50))
    config = gpt_config(store_of(documents), batch_size=4, seq_len=16)
    source = BatchSource(config)
    n = source.examples_per_epoch
    assert n % 4  # so batches straddle epoch boundaries
    rows = np.concatenate([source.batch(s)["input_ids"] for s in range(n // 4 + 1)])[:n]
    windows = source.builder.build(np.arange(n))["input_ids"]
    assert sorted(map(bytes, rows)) == sorted(map(bytes, windows))


def test_validation_batches_are_fixed_and_finite():
    config = bert_config(default_store(), batch_size=8)
    first = list(validation_batches(config))
    again = list(validation_batches(config, num_batches=len(first)))
    assert len(first) >= 2 and all(_equal(a, b) for a, b in zip(first, again, strict=True))
    train = _take(host_batches(config), 1)[0]
    assert not np.array_equal(first[0]["input_ids"], train["input_ids"])
    assert (
        len(list(validation_batches(config, num_batches=3, process_index=1, process_count=2))) == 3
    )


def test_store_without_validation_documents_is_a_clear_error():
    store = store_of((("One.",), ("Two.",)), validation_fraction=0.0)
    with pytest.raises(DataError, match="no validation documents"):
        next(validation_batches(bert_config(store)))


def test_bad_configs_are_clear_errors():
    config = bert_config(default_store())
    with pytest.raises(DataError, match="data.path is empty"):
        host_batches(with_data(config, path=""))
    with pytest.raises(DataError, match="bertgpt prepare"):
        host_batches(with_data(config, path=str(workdir() / "nowhere")))
    with pytest.raises(DataError, match="divisible"):
        host_batches(config, process_count=3)
    small = config.replace(model=config.model.__class__(vocab_size=512))
    with pytest.raises(DataError, match="model.vocab_size=512"):
        host_batches(small)


def test_store_prepared_with_another_tokenizer_is_refused():
    config = bert_config(default_store())
    same = with_data(config, tokenizer=str(workdir() / "default" / "tokenizer"))
    assert _take(host_batches(same), 1)[0]["input_ids"].shape == (16, 64)
    other_dir = workdir() / "other_tokenizer"
    sentences = [f"Another corpus line {i} with words {i * 7} and more." for i in range(300)]
    train_tokenizer(sentences, other_dir, vocab_size=128, inputs_fingerprint="other")
    with pytest.raises(DataError, match="another tokenizer"):
        host_batches(with_data(config, tokenizer=str(other_dir)))


def test_prefetch_hands_builder_errors_to_the_consumer():
    def make(step):
        if step == 2:
            raise RuntimeError("builder failed at step 2")
        return {"step": np.array(step)}

    batches = _prefetch(make, itertools.count(), depth=2)
    assert [int(next(batches)["step"]) for _ in range(2)] == [0, 1]
    with pytest.raises(RuntimeError, match="step 2"):
        next(batches)
