"""From a training step to this host's rows of the global batch, prefetched in the background.

The global batch at step s holds the examples with global indices s*B .. s*B + B - 1 (B =
train.batch_size). Global index g is position g mod N of epoch g div N (N examples per epoch),
mapped to an example id by that epoch's permutation (`sampling.epoch_order`), and the example is
built from uniforms keyed by (data.seed, epoch, position). Process k of n computes only global
rows [k B/n, (k+1) B/n), so the rows of n processes concatenate to the 1-process batch, a resume
at step s needs nothing but s, and changing the number of hosts changes nothing the model sees.

    config = bertgpt_jax.load_config("configs/bert_tiny.yaml", ["data.path=DIR"])
    for batch in host_batches(config, start_step=step, process_index=jax.process_index(),
                              process_count=jax.process_count()):
        ...  # numpy dict; jax.make_array_from_process_local_data(sharding, batch[key])
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from bertgpt_jax.core.config import Config
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.pretrain import EXAMPLE_BUILDERS
from bertgpt_jax.data.sampling import epoch_order, example_uniforms
from bertgpt_jax.data.store import Store, open_store
from bertgpt_jax.data.tokenizers import Tokenizer, load_tokenizer

Batch = dict[str, np.ndarray]


def _checked_tokenizer(store: Store, config: Config) -> Tokenizer:
    """The store's tokenizer, after checking it against the config and the model."""
    tokenizer = load_tokenizer(store.tokenizer_path)
    if tokenizer.identity != store.identity:
        raise DataError(
            f"the tokenizer copy in store {store.path} does not match its manifest; prepare the "
            "store again."
        )
    if config.data.tokenizer:
        named = load_tokenizer(config.data.tokenizer)
        if named.identity != store.identity:
            raise DataError(
                f"store {store.path} was prepared with another tokenizer than "
                f"data.tokenizer={config.data.tokenizer} (sha256 {store.identity.model_sha256[:12]}"
                f" vs {named.identity.model_sha256[:12]}); prepare the store with that tokenizer "
                "or point data.tokenizer at the one the store was made with."
            )
    if tokenizer.vocab_size > config.model.vocab_size:
        raise DataError(
            f"the tokenizer of store {store.path} has {tokenizer.vocab_size} pieces but "
            f"model.vocab_size={config.model.vocab_size}; set model.vocab_size to at least "
            f"{tokenizer.vocab_size} or train a smaller tokenizer."
        )
    return tokenizer


def check_store(config: Config, splits: tuple[str, ...] = ("train",)) -> None:
    """The checks `BatchSource` makes on opening, without building examples: data.path is a
    complete store, its tokenizer is the manifest's (and data.tokenizer's) and fits
    model.vocab_size, and each split has documents with arrays of the recorded sizes."""
    store = open_store(config.data.path)
    _checked_tokenizer(store, config)
    for split in splits:
        store.split(split)


class BatchSource:
    """Computes this process's rows of the global batch at any step, for one split."""

    def __init__(
        self, config: Config, split: str = "train", process_index: int = 0, process_count: int = 1
    ) -> None:
        batch_size = config.train.batch_size
        if process_count < 1 or not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} must lie in [0, {process_count}).")
        if batch_size % process_count:
            raise DataError(
                f"train.batch_size={batch_size} must be divisible by the {process_count} processes."
            )
        if not config.data.path:
            raise DataError(
                "data.path is empty; prepare a store with `bertgpt prepare` and pass data.path=DIR."
            )
        store = open_store(config.data.path)
        tokenizer = _checked_tokenizer(store, config)
        arrays = store.split(split)
        if config.task.name not in EXAMPLE_BUILDERS:
            raise DataError(f"task.name={config.task.name} reads no prepared store.")
        self.stream, make_builder = EXAMPLE_BUILDERS[config.task.name]
        self.builder = make_builder(config, arrays, tokenizer)
        self.seed = config.data.seed
        self.global_batch = batch_size
        self.rows = batch_size // process_count
        self.first_row = process_index * self.rows

    @property
    def examples_per_epoch(self) -> int:
        return self.builder.num_examples

    def batch(self, step: int) -> Batch:
        """This process's rows of the global batch at `step`."""
        start = step * self.global_batch + self.first_row
        index = np.arange(start, start + self.rows, dtype=np.int64)
        n = self.builder.num_examples
        epoch, position = np.divmod(index, n)
        example = np.empty_like(index)
        for e in np.unique(epoch):  # a batch can straddle an epoch boundary
            at = epoch == e
            example[at] = epoch_order(self.seed, int(e), n, position[at])
        uniforms = None
        if self.builder.num_uniforms:
            uniforms = example_uniforms(
                self.seed, self.stream, epoch, position, self.builder.num_uniforms
            )
        return self.builder.build(example, uniforms)


def _prefetch(make: Callable[[int], Batch], steps: Iterable[int], depth: int) -> Iterator[Batch]:
    """Yields make(step) for each step, computed up to `depth` steps ahead on a thread."""
    if depth <= 0:
        yield from map(make, steps)
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for step in steps:
                if stop.is_set():
                    return
                put(make(step))
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    thread = threading.Thread(target=work, name="bertgpt-data-prefetch", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()


def host_batches(
    config: Config,
    split: str = "train",
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Endless iterator of this process's rows (train.batch_size / process_count of them) of the
    global batches at steps start_step, start_step + 1, ...; see the module docstring."""
    source = BatchSource(config, split, process_index, process_count)
    return _prefetch(source.batch, itertools.count(start_step), config.data.prefetch)


def validation_batches(
    config: Config,
    num_batches: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The validation split as `num_batches` batches (default: as many whole batches as it holds,
    at least one); the same batches on every call, so evaluations are comparable."""
    source = BatchSource(config, "validation", process_index, process_count)
    if num_batches is None:
        num_batches = max(1, source.examples_per_epoch // source.global_batch)
    return _prefetch(source.batch, range(num_batches), config.data.prefetch)
