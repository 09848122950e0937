"""Shared, process-cached data fixtures for the test_data_* files, and the embedded-corpus tests.

The helpers are plain cached functions (not conftest fixtures) so that every test file can
import them and a store is built once per test process: `default_store()` is the embedded
corpus prepared with a 1024-piece tokenizer, `store_of(documents)` a store of given documents.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from bertgpt_jax.core.config import Config, config_from_dict
from bertgpt_jax.data.embedded import prepare_default, write_default_corpus
from bertgpt_jax.data.store import MANIFEST, open_store, prepare_store


@functools.cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bertgpt-data-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def default_store() -> Path:
    return prepare_default(workdir() / "default", vocab_size=1024)


def default_tokenizer() -> Path:
    default_store()
    return workdir() / "default" / "tokenizer"


def write_bert_file(path: Path, documents: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return path


def store_of(documents: tuple[tuple[str, ...], ...], validation_fraction: float = 0.0) -> Path:
    """A store (default tokenizer) of the given documents, cached by content."""
    return _store_of(documents, validation_fraction)


@functools.cache
def _store_of(documents: tuple[tuple[str, ...], ...], validation_fraction: float) -> Path:
    name = hashlib.sha256(repr((documents, validation_fraction)).encode()).hexdigest()[:16]
    corpus = write_bert_file(workdir() / name / "corpus.txt", [list(d) for d in documents])
    return prepare_store(
        workdir() / name / "store",
        default_tokenizer(),
        inputs=[corpus],
        validation_fraction=validation_fraction,
    )


def bert_config(store: Path, batch_size: int = 16, **data: object) -> Config:
    base = {"path": str(store), "seq_len": 64, "max_predictions_per_seq": 10, "prefetch": 0}
    return config_from_dict(
        {
            "model": {"family": "bert", "vocab_size": 1024, "max_len": 512},
            "data": {**base, **data},
            "train": {"batch_size": batch_size},
        }
    )


def gpt_config(store: Path, batch_size: int = 8, **data: object) -> Config:
    base = {"path": str(store), "seq_len": 64, "prefetch": 0}
    return config_from_dict(
        {
            "model": {"family": "gpt", "vocab_size": 1024, "norm_position": "pre"},
            "data": {**base, **data},
            "train": {"batch_size": batch_size},
        }
    )


def with_data(config: Config, **changes: object) -> Config:
    return config.replace(data=dataclasses.replace(config.data, **changes))


def test_default_corpus_is_prose_in_bert_format():
    files = write_default_corpus(workdir() / "corpus_only")
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    documents = [d for d in text.split("\n\n") if d.strip()]
    assert 1_000_000 < len(text) < 2_000_000
    assert len(documents) > 200
    assert not any(line.startswith(">>>") for line in text.splitlines())
    multi = sum(len(d.splitlines()) >= 2 for d in documents)
    assert multi > 0.8 * len(documents)  # long documents, so NSP has real continuations


def test_prepare_default_is_idempotent_and_fast():
    store = default_store()
    manifest_time = (store / MANIFEST).stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_default(workdir() / "default", vocab_size=1024) == store
    assert time.perf_counter() - start < 10
    assert (store / MANIFEST).stat().st_mtime_ns == manifest_time
    splits = open_store(store).manifest["splits"]
    assert splits["train"]["tokens"] > 300_000 and splits["validation"]["documents"] >= 10
