"""GPT: next-token prediction over packed windows, the tied head and the loss as one operation
(`tied_causal_lm_loss`). Exports to `GPT2LMHeadModel`.

`causal_lm` pretrains, or fine-tunes on a user's documents; `sft` fine-tunes on prompt ->
completion examples, packed whole with the loss on completion tokens only (the store's loss
mask, data/pretrain/gpt_examples.py). With train.eval_steps 0 (fine-tuning's default)
evaluation covers every validation window once, the last batch padded with rows of zero loss
weight.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.model.gpt import Gpt
from bertgpt_jax.ops.cross_entropy import LossSums
from bertgpt_jax.tasks.base import Batch, Evaluator, Task, token_batch
from bertgpt_jax.tasks.losses import tied_causal_lm_loss

Array = jax.Array


class CausalLm(Task):
    name = "causal_lm"
    family = "gpt"
    batch_keys = ("input_ids", "positions", "segment_ids", "targets", "loss_weights")
    hf_architecture = "GPT2LMHeadModel"
    hf_pipeline = "text-generation"
    description = "causal LM"
    paired_inputs = False

    def build_model(self, config: ModelConfig, key: Array) -> Gpt:
        return Gpt(config, key)

    def loss_terms(self, model: Gpt, batch: Batch, key: Array | None) -> dict[str, LossSums]:
        # The same sums as causal_lm_loss(model(...)["logits"], ...), with a cheaper backward.
        hidden = model.encode(
            batch["input_ids"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            key=key,
        )
        lm = tied_causal_lm_loss(
            hidden,
            model.output_embedding(),
            batch["targets"],
            batch["loss_weights"],
            model.config.dtype,
            model.config.vocab_size,
        )
        return {"lm": lm}

    def coefficients(self, config: Config) -> dict[str, float]:
        return {"lm": 1.0}

    def evaluate(
        self, config: Config, evaluator: Evaluator, process_index: int, process_count: int
    ) -> dict[str, float]:
        """train.eval_steps batches, or with 0 every validation window: loss, perplexity, and
        the windows and target tokens scored."""
        if config.train.eval_steps > 0:
            return super().evaluate(config, evaluator, process_index, process_count)
        from bertgpt_jax.data.pipeline import BatchSource

        source = BatchSource(config, "validation", process_index, process_count)
        n, size = source.examples_per_epoch, config.train.batch_size
        totals = np.zeros(3)
        for start in range(0, n, size):
            ids = np.arange(start, start + size)[source.first_row :][: source.rows]
            rows = source.builder.build(np.minimum(ids, n - 1))
            rows["loss_weights"] = rows["loss_weights"] * (ids < n)[:, None]
            totals += evaluator.loss_sums(rows)["lm"]
        metrics = self.metrics({"lm": LossSums(*totals)}, self.coefficients(config))
        return {**{k: float(v) for k, v in metrics.items()}, "windows": n, "tokens": totals[1]}

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {"lm": batch["loss_weights"].astype(np.float32).sum()}

    def metrics(self, terms: Any, coefficients: Any) -> dict[str, Array]:
        """loss, lm_loss, lm_accuracy and perplexity = exp(lm_loss)."""
        metrics = super().metrics(terms, coefficients)
        del metrics["lm_accuracy"]
        metrics["perplexity"] = jax.numpy.exp(metrics["lm_loss"])
        return metrics

    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        made = token_batch(config, batch_size, seed)
        return {
            "input_ids": made["input_ids"],
            "positions": made["positions"],
            "segment_ids": made["segment_ids"],
            "targets": made["ids"][:, 1:].copy(),
            "loss_weights": np.ones((batch_size, config.data.seq_len), np.float32),
        }

    def head_flops(self, config: Config) -> float:
        """The tied output projection at every token."""
        m = config.model
        return float(
            6 * m.hidden_size * m.vocab_size * config.train.batch_size * config.data.seq_len
        )

    def predict(
        self,
        model: Gpt,
        input_ids: Array,
        *,
        positions: Array,
        segment_ids: Array,
        token_type_ids: Array | None,
    ) -> dict[str, Any]:
        """logits [B, L, V] for the next token at every position."""
        return model(input_ids, positions=positions, segment_ids=segment_ids)


class Sft(CausalLm):
    """Supervised fine-tuning on prompt -> completion examples (bertgpt finetune --task sft)."""

    name = "sft"
    description = "causal LM fine-tuned on prompt -> completion examples"
