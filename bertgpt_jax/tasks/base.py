"""What a task is: everything that varies with what is being trained.

A `Task` says which model (core + heads) it trains, the batch keys it reads, its loss terms and
their whole-batch denominators, its metric names, a synthetic batch for `bench` and the compile
check, the FLOPs of its heads, its inference outputs, and the HuggingFace class it exports to.
It also says where its batches come from (`host_batches`; by default the prepared store's
pretraining pipeline) and how it is evaluated (`evaluate`, given the jitted forward passes as an
`Evaluator`; by default mean loss terms over `train.eval_steps` batches), so fine-tuning tasks
bring their own labelled files and metrics (tasks/finetune). The train step, the loop, the
checkpointer and the CLI only ever call these methods; they never ask which family or task they
run.

Losses are carried as per-term `LossSums`; the scalar to differentiate divides each term's sum
by that term's weight over the *whole* global batch (`term_weights`), so splitting the batch
into microbatches and summing their gradients gives exactly the full-batch gradient.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.ops.cross_entropy import LossSums

Array = jax.Array
Batch = Mapping[str, Array]
HostBatch = dict[str, np.ndarray]


class Evaluator(Protocol):
    """What the training stack lends a task's evaluation: the jitted, sharded forward passes
    of the state being evaluated, on this process's rows of a global batch."""

    def loss_sums(self, rows: Mapping[str, np.ndarray]) -> dict[str, LossSums]:
        """The batch's per-term loss sums (host numpy)."""
        ...

    def outputs(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`Task.predict` of the whole global batch, on every process (host numpy)."""
        ...


class Task(abc.ABC):
    """One training task; instances are registered by name in `bertgpt_jax.tasks`."""

    name: ClassVar[str]
    family: ClassVar[str]  # the architecture (model.family) it trains
    batch_keys: ClassVar[tuple[str, ...]]
    hf_architecture: ClassVar[str]  # the transformers class the export loads into
    hf_pipeline: ClassVar[str]  # the transformers pipeline tag for the model card
    description: ClassVar[str]  # one phrase for the model card, e.g. "causal LM"
    # Inputs are [CLS] A [SEP] (B [SEP]) with token types (BERT), not plain text (GPT): the
    # exported tokenizer adds those tokens and config.json names no begin/end token.
    paired_inputs: ClassVar[bool]
    # The eval metric whose best value picks the kept checkpoint (train.best_metric overrides;
    # empty: none is kept).
    best_metric: ClassVar[str] = ""

    def for_config(self, config: Config) -> Task:
        """This task as `config` sets it up (e.g. with its label names); most need nothing."""
        return self

    def tuned(self, metrics: Mapping[str, float]) -> Task:
        """This task with what its evaluation tuned (e.g. a threshold), from the saved eval
        metrics; most tune nothing."""
        return self

    def hf_config(self) -> dict[str, Any]:
        """Keys this task adds to an exported config.json (e.g. id2label)."""
        return {}

    def host_batches(
        self,
        config: Config,
        split: str,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[HostBatch]:
        """This process's rows of the global batches from `start_step` on: by default the
        prepared store's pretraining pipeline (data.host_batches)."""
        from bertgpt_jax.data import host_batches

        return host_batches(
            config,
            split=split,
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )

    def evaluate(
        self, config: Config, evaluator: Evaluator, process_index: int, process_count: int
    ) -> dict[str, float]:
        """Validation metrics; by default the mean loss terms over `train.eval_steps` batches
        (the same batches every time)."""
        totals: dict[str, LossSums] | None = None
        batches = self.host_batches(config, "validation", 0, process_index, process_count)
        for _, rows in zip(range(config.train.eval_steps), batches, strict=False):
            sums = evaluator.loss_sums(rows)
            if totals is None:
                totals = sums
            else:
                totals = {k: LossSums(*np.add(totals[k], sums[k])) for k in totals}
        if totals is None:
            return {}
        return {k: float(v) for k, v in self.metrics(totals, self.coefficients(config)).items()}

    @abc.abstractmethod
    def build_model(self, config: ModelConfig, key: Array) -> Any:
        """The model this task trains, with freshly initialised float32 parameters."""

    @abc.abstractmethod
    def loss_terms(self, model: Any, batch: Batch, key: Array | None) -> dict[str, LossSums]:
        """Per-term loss sums of one (micro)batch; `key` None means no dropout."""

    @abc.abstractmethod
    def coefficients(self, config: Config) -> dict[str, float]:
        """The weight of each term in the scalar loss (0 leaves a term out)."""

    @abc.abstractmethod
    def term_weights(self, batch: Batch) -> dict[str, Array]:
        """The denominator of each term over the whole batch (known before any forward pass)."""

    @abc.abstractmethod
    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """One global batch of random data with the real batch contract."""

    @abc.abstractmethod
    def head_flops(self, config: Config) -> float:
        """Training FLOPs of one global step spent in the task's heads (6 per multiply-add)."""

    @abc.abstractmethod
    def predict(
        self,
        model: Any,
        input_ids: Array,
        *,
        positions: Array,
        segment_ids: Array,
        token_type_ids: Array | None,
    ) -> dict[str, Array]:
        """Deterministic outputs at every position, for inference (`load_pretrained`)."""

    def abstract_model(self, config: ModelConfig) -> Any:
        """The model as ShapeDtypeStructs: nothing is allocated."""
        return nnx.eval_shape(lambda: self.build_model(config, jax.random.key(0)))

    def abstract_params(self, config: ModelConfig) -> dict[str, Any]:
        """The parameter tree as ShapeDtypeStructs (nested dict, our layout)."""
        return nnx.state(self.abstract_model(config), nnx.Param).to_pure_dict()

    def scalar_loss(
        self,
        terms: Mapping[str, LossSums],
        coefficients: Mapping[str, float],
        weights: Mapping[str, Array],
    ) -> Array:
        total = jnp.zeros((), jnp.float32)
        for name, sums in terms.items():
            if coefficients[name]:
                total = total + coefficients[name] * sums.loss_sum / jnp.maximum(
                    weights[name], 1e-8
                )
        return total

    def metrics(
        self, terms: Mapping[str, LossSums], coefficients: Mapping[str, float]
    ) -> dict[str, Array]:
        """`loss` and, per term, `{term}_loss` and `{term}_accuracy` (the fixed metric names)."""
        metrics: dict[str, Array] = {}
        loss = jnp.zeros((), jnp.float32)
        for name, sums in terms.items():
            mean = sums.mean()
            loss = loss + coefficients[name] * mean
            metrics[f"{name}_loss"] = mean
            metrics[f"{name}_accuracy"] = sums.accuracy()
        metrics["loss"] = loss
        return metrics


def token_batch(config: Config, batch_size: int, seed: int) -> dict[str, Any]:
    """Random token ids [B, L + 1] and the inputs every task reads: input_ids, positions,
    segment_ids (all 1, no padding), plus the generator for what a task adds."""
    rng = np.random.default_rng(seed)
    length, vocab = config.data.seq_len, config.model.vocab_size
    ids = rng.integers(0, vocab, (batch_size, length + 1), dtype=np.int32)
    return {
        "ids": ids,
        "rng": rng,
        "input_ids": ids[:, :-1],
        "positions": np.broadcast_to(
            np.arange(length, dtype=np.int32), (batch_size, length)
        ).copy(),
        "segment_ids": np.ones((batch_size, length), np.int32),
    }
