"""Sequence-level tasks on one text or a text pair, as `BertForSequenceClassification`:

* `classification`: softmax cross-entropy over the label names;
* `regression`: mean squared error of one output (HF problem_type "regression");
* `multilabel`: sigmoid binary cross-entropy per label (HF "multi_label_classification"),
  a label predicted where its probability exceeds 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.data.finetune.encode import encode_texts
from bertgpt_jax.data.finetune.sequence import check_labels, label_names, read_text_examples
from bertgpt_jax.data.tokenizers import Tokenizer
from bertgpt_jax.model.finetune import SequenceClassifier
from bertgpt_jax.ops.cross_entropy import LossSums, cross_entropy
from bertgpt_jax.tasks.base import Batch
from bertgpt_jax.tasks.finetune.base import Dataset, FinetuneTask, weighted_sums
from bertgpt_jax.tasks.finetune.metrics import (
    classification_metrics,
    multilabel_metrics,
    regression_metrics,
)
from bertgpt_jax.tasks.losses import sigmoid_cross_entropy

Array = jax.Array
_PROBLEM = {
    "classification": "single_label_classification",
    "regression": "regression",
    "multilabel": "multi_label_classification",
}


class _SequenceTask(FinetuneTask):
    batch_keys = (
        "input_ids", "token_type_ids", "segment_ids", "positions", "labels", "example_weights",
    )  # fmt: skip
    hf_architecture = "BertForSequenceClassification"
    hf_pipeline = "text-classification"
    term: ClassVar[str] = "cls"

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 2

    def head_flops(self, config: Config) -> float:
        """Pooler [D, D] and classifier [D, C] once per sequence."""
        d = config.model.hidden_size
        return float(6 * (d * d + d * self.num_labels) * config.train.batch_size)

    def build_model(self, config: ModelConfig, key: Array) -> SequenceClassifier:
        return SequenceClassifier(config, self.num_labels, key)

    def _logits(self, model: SequenceClassifier, batch: Batch, key: Array | None) -> Array:
        return model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            key=key,
        )

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {self.term: batch["example_weights"].astype(jnp.float32).sum()}

    def hf_config(self) -> dict[str, Any]:
        return {
            **self.stored_options(),
            "architectures": [self.hf_architecture],
            "problem_type": _PROBLEM[self.name],
            **self.label_maps(),
        }

    def discover_labels(self, path: Path) -> tuple[str, ...]:
        return label_names(read_text_examples(path, self.options, self.name), self.name)

    def check_validation(self, data: Dataset) -> None:
        check_labels(data.examples, self.name, self.labels)

    def read_examples(self, path: Path, labelled: bool) -> list[Any]:
        return read_text_examples(path, self.options, self.name, labelled)

    def encode(self, examples: list[Any], tokenizer: Tokenizer, source: str) -> Dataset:
        pairs = [e.pair or "" for e in examples] if examples[0].pair is not None else None
        rows = encode_texts(tokenizer, [e.text for e in examples], pairs, self.seq_len)
        rows["labels"] = self._label_array([e.label for e in examples])
        return Dataset(rows, examples, source)

    def _label_array(self, labels: list[Any]) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.labels)}
        return np.asarray([index.get(x, 0) for x in labels], np.int32)

    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        rows = self.synthetic_rows(config, batch_size, seed)
        rng = np.random.default_rng(seed + 1)
        rows["labels"] = self._label_array(
            [self.labels[i] if self.labels else None for i in rng.integers(0, 2, batch_size)]
        )
        return rows


class Classification(_SequenceTask):
    name = "classification"
    description = "sequence classification"
    best_metric: ClassVar[str] = "accuracy"
    metric_names = ("accuracy", "f1", "mcc", "loss", "examples")

    def loss_terms(
        self, model: SequenceClassifier, batch: Batch, key: Array | None
    ) -> dict[str, LossSums]:
        logits = self._logits(model, batch, key)
        return {self.term: cross_entropy(logits, batch["labels"], batch["example_weights"])}

    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        predicted = outputs["logits"].argmax(-1)
        return classification_metrics(predicted, data.rows["labels"], self.labels)

    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        probs = np.asarray(jax.nn.softmax(outputs["logits"], axis=-1))
        names = self.hf_config()["id2label"]
        return [
            {"label": names[str(int(p.argmax()))], "score": float(p.max()),
             "scores": {names[str(i)]: float(v) for i, v in enumerate(p)}}
            for p in probs
        ]  # fmt: skip


class Regression(_SequenceTask):
    name = "regression"
    description = "sequence regression"
    best_metric: ClassVar[str] = "pearson"
    metric_names = ("pearson", "spearman", "mse", "loss", "examples")

    @property
    def num_labels(self) -> int:
        return 1

    def _label_array(self, labels: list[Any]) -> np.ndarray:
        return np.asarray([0.0 if x is None else x for x in labels], np.float32)

    def loss_terms(
        self, model: SequenceClassifier, batch: Batch, key: Array | None
    ) -> dict[str, LossSums]:
        predicted = self._logits(model, batch, key)[:, 0]
        error = jnp.square(predicted - batch["labels"])
        return {self.term: weighted_sums(error, batch["example_weights"], jnp.zeros_like(error))}

    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return regression_metrics(outputs["logits"][:, 0], data.rows["labels"])

    def hf_config(self) -> dict[str, Any]:
        return {**super().hf_config(), "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}

    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"score": float(v)} for v in outputs["logits"][:, 0]]


class MultiLabel(_SequenceTask):
    name = "multilabel"
    description = "multi-label classification"
    best_metric: ClassVar[str] = "micro_f1"
    metric_names = ("micro_f1", "macro_f1", "exact_match", "loss", "examples")

    def _label_array(self, labels: list[Any]) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.labels)}
        out = np.zeros((len(labels), self.num_labels), np.float32)
        for row, names in enumerate(labels):
            for name in names or ():
                if name in index:
                    out[row, index[name]] = 1.0
        return out

    def loss_terms(
        self, model: SequenceClassifier, batch: Batch, key: Array | None
    ) -> dict[str, LossSums]:
        logits = self._logits(model, batch, key)  # [B, C]
        target = batch["labels"]
        bce = sigmoid_cross_entropy(logits, target).sum(-1)  # [B]
        correct = ((logits > 0) == (target > 0.5)).sum(-1)
        sums = weighted_sums(bce, batch["example_weights"], correct)
        c = float(self.num_labels)  # HF's BCEWithLogitsLoss averages over labels too
        return {self.term: LossSums(sums.loss_sum, sums.weight_sum * c, sums.correct_sum)}

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {self.term: batch["example_weights"].astype(jnp.float32).sum() * self.num_labels}

    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return multilabel_metrics(outputs["logits"] > 0, data.rows["labels"], self.labels)

    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        probs = 1.0 / (1.0 + np.exp(-outputs["logits"].astype(np.float64)))
        return [
            {"labels": [n for n, v in zip(self.labels, p, strict=True) if v > 0.5],
             "scores": {n: float(v) for n, v in zip(self.labels, p, strict=True)}}
            for p in probs
        ]  # fmt: skip
