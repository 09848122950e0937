"""Token classification (named entities, parts of speech, ...), as
`BertForTokenClassification`: softmax cross-entropy at the tagged sub-token of each word;
entity-level precision / recall / F1 as seqeval counts them (BIO, IOB1 or plain tags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.data.finetune.files import read_conll
from bertgpt_jax.data.finetune.tagging import check_tags, encode_tagged, tag_names
from bertgpt_jax.data.tokenizers import Tokenizer
from bertgpt_jax.model.finetune import TokenClassifier
from bertgpt_jax.ops.cross_entropy import LossSums, cross_entropy
from bertgpt_jax.tasks.base import Batch
from bertgpt_jax.tasks.finetune.base import Dataset, FinetuneTask
from bertgpt_jax.tasks.finetune.metrics import tagging_metrics

Array = jax.Array


class Tagging(FinetuneTask):
    name = "tagging"
    description = "token classification"
    batch_keys = ("input_ids", "token_type_ids", "segment_ids", "positions", "tag_ids",
                  "tag_weights", "example_weights")  # fmt: skip
    hf_architecture = "BertForTokenClassification"
    hf_pipeline = "token-classification"
    best_metric: ClassVar[str] = "f1"
    metric_names = ("precision", "recall", "f1", "accuracy", "loss", "examples")
    term: ClassVar[str] = "tag"

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 2

    def build_model(self, config: ModelConfig, key: Array) -> TokenClassifier:
        return TokenClassifier(config, self.num_labels, key)

    def loss_terms(
        self, model: TokenClassifier, batch: Batch, key: Array | None
    ) -> dict[str, LossSums]:
        logits = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            key=key,
        )  # [B, L, C]
        return {self.term: cross_entropy(logits, batch["tag_ids"], self._weights(batch))}

    def _weights(self, batch: Batch) -> Array:
        return batch["tag_weights"] * batch["example_weights"][:, None]  # [B, L]

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {self.term: self._weights(batch).astype(jnp.float32).sum()}

    def hf_config(self) -> dict[str, Any]:
        return {
            **self.stored_options(),
            "architectures": [self.hf_architecture],
            **self.label_maps(),
        }

    def discover_labels(self, path: Path) -> tuple[str, ...]:
        return tag_names(read_conll(path))

    def check_validation(self, data: Dataset) -> None:
        check_tags(data.examples, self.labels)

    def read_examples(self, path: Path, labelled: bool) -> list[Any]:
        return read_conll(path, labelled)

    def encode(self, examples: list[Any], tokenizer: Tokenizer, source: str) -> Dataset:
        rows = encode_tagged(tokenizer, examples, self.labels, self.seq_len, self.label_all_tokens)
        return Dataset(rows, examples, source)

    def _word_tags(self, data: Dataset, logits: np.ndarray) -> list[list[tuple[str, float]]]:
        """(tag, probability) per word of each sentence; words cut off are ("O", 0)."""
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        names = self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        out = []
        for i, sentence in enumerate(data.examples):
            words = [("O", 0.0)] * len(sentence.tokens)
            for position in np.flatnonzero(data.rows["word_ids"][i] >= 0):
                p = probs[i, position]
                words[data.rows["word_ids"][i, position]] = (names[p.argmax()], float(p.max()))
            out.append(words)
        return out

    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        predicted = [[t for t, _ in s] for s in self._word_tags(data, outputs["logits"])]
        return tagging_metrics(predicted, [s.tags for s in data.examples])

    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [
            {"tokens": list(s.tokens), "tags": [t for t, _ in words],
             "scores": [p for _, p in words]}
            for s, words in zip(data.examples, self._word_tags(data, outputs["logits"]), strict=True)
        ]  # fmt: skip

    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        rows = self.synthetic_rows(config, batch_size, seed)
        rng = np.random.default_rng(seed + 1)
        shape = rows["input_ids"].shape
        rows["tag_ids"] = rng.integers(0, self.num_labels, shape).astype(np.int32)
        rows["tag_weights"] = rows["segment_ids"].astype(np.float32)
        return rows
