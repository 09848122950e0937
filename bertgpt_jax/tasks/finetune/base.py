"""What every fine-tuning task shares: it trains a BERT encoder with a new head on a labelled
file, read with the init model's tokenizer into fixed-shape rows (data/finetune), batched as
the pretraining pipeline batches (a pure function of the seed and the step), and evaluated on
every validation example (the last batch padded and masked, the count reported).

A task instance is set up by `for_config` with what the run's config says (label names, column
names, windowing rules, sequence length), so the model, the metrics and the export know them;
`Dataset`s are read once per process and split, and kept.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bertgpt_jax.core.config import Config, TaskConfig
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.finetune.batches import eval_batches, train_batches
from bertgpt_jax.data.tokenizers import Tokenizer, load_tokenizer
from bertgpt_jax.ops.cross_entropy import LossSums
from bertgpt_jax.tasks.base import Evaluator, HostBatch, Task


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A split as fixed-shape rows [N, ...] and the examples they were made from."""

    rows: dict[str, np.ndarray]
    examples: list[Any]
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))


@dataclasses.dataclass(frozen=True)
class FinetuneTask(Task):
    """A BERT fine-tuning task; subclasses read files, build heads and score predictions."""

    labels: tuple[str, ...] = ()
    options: TaskConfig = TaskConfig()
    seq_len: int = 128
    label_all_tokens: bool = False
    version_2: bool = False  # QA: unanswerable questions exist (a tuned threshold applies)

    family: ClassVar[str] = "bert"
    paired_inputs: ClassVar[bool] = True
    term: ClassVar[str] = "task"  # the name of the one loss term
    # The evaluation's metric names (besides per-label ones such as "f1/NAME").
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "examples")

    def for_config(self, config: Config) -> FinetuneTask:
        return dataclasses.replace(
            self,
            labels=tuple(config.task.labels),
            options=config.task,
            seq_len=config.data.seq_len,
            label_all_tokens=config.data.label_all_tokens,
        )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def from_hf_config(self, hf_config: Mapping[str, Any]) -> FinetuneTask:
        """This task as an exported config.json describes it (see `hf_config`)."""
        stored = dict(hf_config.get("bertgpt_task") or {})
        id2label = hf_config.get("id2label") or {}
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        if self.name == "regression":
            labels = ()
        kept: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in stored.get("options", {}).items()
        }  # JSON lists back to the config's tuples
        options = TaskConfig(**{**kept, "labels": labels, "name": self.name})
        return dataclasses.replace(
            self,
            labels=labels,
            options=options,
            seq_len=int(stored.get("seq_len", self.seq_len)),
            label_all_tokens=bool(stored.get("label_all_tokens", False)),
            version_2=bool(stored.get("version_2", False)),
        )

    def stored_options(self) -> dict[str, Any]:
        """What an export keeps of this task's setup, under config.json's "bertgpt_task"."""
        options = {k: v for k, v in dataclasses.asdict(self.options).items() if k != "labels"}
        return {
            "bertgpt_task": {
                "options": options,
                "seq_len": self.seq_len,
                "label_all_tokens": self.label_all_tokens,
            }
        }

    # What a subclass provides.

    @abc.abstractmethod
    def read_examples(self, path: Path, labelled: bool) -> list[Any]:
        """A file's examples; `labelled` False (prediction): labels are optional."""

    @abc.abstractmethod
    def encode(self, examples: list[Any], tokenizer: Tokenizer, source: str) -> Dataset:
        """Examples (all of a file's, or a slice) as fixed-shape rows."""

    def read(self, path: Path, tokenizer: Tokenizer, labelled: bool) -> Dataset:
        return self.encode(self.read_examples(path, labelled), tokenizer, str(path))

    @abc.abstractmethod
    def discover_labels(self, path: Path) -> tuple[str, ...]:
        """The sorted label names of a training file."""

    @abc.abstractmethod
    def check_validation(self, data: Dataset) -> None:
        """Raises DataError for a validation example the model cannot score (an unknown label)."""

    @abc.abstractmethod
    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics from the model's outputs on every row of `data`."""

    @abc.abstractmethod
    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """One prediction record per example (label names or answer text, and scores)."""

    # Shared behaviour.

    def coefficients(self, config: Config) -> dict[str, float]:
        return {self.term: 1.0}

    def dataset(self, config: Config, split: str) -> Dataset:
        paths = config.data.train_file if split == "train" else config.data.validation_file
        if len(paths) != 1:
            given = "none" if not paths else f"{len(paths)} ({', '.join(paths)})"
            raise DataError(
                f"data.{split}_file must be one {split} file for task {self.name}, but {given} "
                "given; pass exactly one."
            )
        if not config.data.tokenizer:
            raise DataError("data.tokenizer is not set; fine-tune with `bertgpt finetune`.")
        file = Path(paths[0])
        stamp = file.stat().st_mtime_ns if file.is_file() else 0
        return _read_cached(self, str(file), stamp, config.data.tokenizer)

    def host_batches(
        self, config: Config, split: str, start_step: int, process_index: int, process_count: int
    ) -> Iterator[HostBatch]:
        data = self.dataset(config, split)
        b = config.train.batch_size
        if split == "train":
            return train_batches(
                data.rows, b, config.data.seed, start_step, process_index, process_count
            )
        return eval_batches(data.rows, b, process_index, process_count)

    def evaluate(
        self, config: Config, evaluator: Evaluator, process_index: int, process_count: int
    ) -> dict[str, float]:
        """Metrics over every validation example (padding rows weigh 0), plus the mean loss
        and the number of examples scored."""
        data = self.dataset(config, "validation")
        outputs: list[dict[str, np.ndarray]] = []
        loss = np.zeros(2)
        b = config.train.batch_size
        for rows in eval_batches(data.rows, b, process_index, process_count):
            outputs.append(evaluator.outputs(rows))
            sums = evaluator.loss_sums(rows)[self.term]
            loss += [sums.loss_sum, sums.weight_sum]
        joined = {k: np.concatenate([o[k] for o in outputs])[: len(data)] for k in outputs[0]}
        metrics = self.score(data, joined)
        metrics["loss"] = float(loss[0] / max(loss[1], 1e-8))
        metrics["examples"] = float(len(data.examples))
        return metrics

    def synthetic_rows(self, config: Config, batch_size: int, seed: int) -> HostBatch:
        """Random inputs of the batch contract (no labels): [CLS] tokens [SEP] padding."""
        rng = np.random.default_rng(seed)
        b, length = batch_size, config.data.seq_len
        lengths = rng.integers(length // 2, length + 1, b)
        real = np.arange(length)[None] < lengths[:, None]
        ids = rng.integers(5, config.model.vocab_size, (b, length)).astype(np.int32) * real
        return {
            "input_ids": ids.astype(np.int32),
            "token_type_ids": (np.arange(length)[None] >= lengths[:, None] // 2).astype(np.int32)
            * real,
            "segment_ids": real.astype(np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
            "example_weights": np.ones(b, np.float32),
        }

    def predict(
        self,
        model: Any,
        input_ids: Any,
        *,
        positions: Any,
        segment_ids: Any,
        token_type_ids: Any | None,
    ) -> dict[str, Any]:
        """The head's logits ([B, C] or [B, L, C]); QA overrides with its two."""
        logits = model(
            input_ids, token_type_ids=token_type_ids, segment_ids=segment_ids, positions=positions
        )
        return {"logits": logits}

    def label_maps(self) -> dict[str, Any]:
        """config.json's id2label and label2id (LABEL_i where the task has no names)."""
        names = self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return {
            "id2label": {str(i): n for i, n in enumerate(names)},
            "label2id": {n: i for i, n in enumerate(names)},
        }

    def head_flops(self, config: Config) -> float:
        """A dense [D, C] at every position (token and span heads; sequence heads override)."""
        m, tokens = config.model, config.train.batch_size * config.data.seq_len
        return float(6 * m.hidden_size * self.num_labels * tokens)


@functools.lru_cache(maxsize=8)
def _read_cached(task: FinetuneTask, path: str, stamp: int, tokenizer: str) -> Dataset:
    del stamp  # part of the cache key: a rewritten file is read again
    return task.read(Path(path), load_tokenizer(tokenizer), labelled=True)


def weighted_sums(per_example: Any, weights: Any, correct: Any) -> LossSums:
    """LossSums of per-example losses [B] with weights [B] (0 = padding row)."""
    return LossSums(
        (per_example * weights).sum(),
        weights.sum(),
        (correct.astype(weights.dtype) * weights).sum(),
    )
