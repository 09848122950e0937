"""BERT pretraining: masked LM at the gathered positions + the sentence-pair task (NSP, or
ALBERT's SOP) with a configurable weight (0, or data.pair_task=none, trains masked LM alone, as
RoBERTa). Exports to `BertForPreTraining`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.model.bert import Bert
from bertgpt_jax.ops.cross_entropy import LossSums
from bertgpt_jax.tasks.base import Batch, Task, token_batch
from bertgpt_jax.tasks.losses import masked_lm_loss, next_sentence_loss

Array = jax.Array


class MaskedLm(Task):
    name = "masked_lm"
    family = "bert"
    batch_keys = (
        "input_ids", "token_type_ids", "segment_ids", "positions",
        "mlm_positions", "mlm_ids", "mlm_weights", "nsp_labels",
    )  # fmt: skip
    hf_architecture = "BertForPreTraining"
    hf_pipeline = "fill-mask"
    description = "masked LM + sentence-pair"
    paired_inputs = True

    def build_model(self, config: ModelConfig, key: Array) -> Bert:
        return Bert(config, key)

    def loss_terms(self, model: Bert, batch: Batch, key: Array | None) -> dict[str, LossSums]:
        out = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            segment_ids=batch["segment_ids"],
            mlm_positions=batch["mlm_positions"],
            key=key,
        )
        return {
            "mlm": masked_lm_loss(out["mlm_logits"], batch["mlm_ids"], batch["mlm_weights"]),
            "nsp": next_sentence_loss(out["nsp_logits"], batch["nsp_labels"]),
        }

    def coefficients(self, config: Config) -> dict[str, float]:
        nsp = 0.0 if config.data.pair_task == "none" else config.train.nsp_weight
        return {"mlm": 1.0, "nsp": nsp}

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {
            "mlm": batch["mlm_weights"].astype(jnp.float32).sum(),
            "nsp": jnp.asarray(batch["nsp_labels"].shape[0], jnp.float32),
        }

    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Random tokens; masking at max_predictions_per_seq random positions (never [CLS])."""
        made = token_batch(config, batch_size, seed)
        rng, b, length = made["rng"], batch_size, config.data.seq_len
        p = config.data.max_predictions_per_seq
        positions = np.sort(np.argsort(rng.random((b, length - 1)), axis=1)[:, :p] + 1, axis=1)
        types = (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(b, 0)
        return {
            "input_ids": made["input_ids"],
            "positions": made["positions"],
            "segment_ids": made["segment_ids"],
            "token_type_ids": types,
            "mlm_positions": positions.astype(np.int32),
            "mlm_ids": np.take_along_axis(made["input_ids"], positions, axis=1),
            "mlm_weights": np.ones((b, p), np.float32),
            "nsp_labels": rng.integers(0, 2, (b,), dtype=np.int32),
        }

    def head_flops(self, config: Config) -> float:
        """The MLM head runs only at the masked positions; pooler + NSP once per sequence."""
        m, b = config.model, config.train.batch_size
        predicted = b * config.data.max_predictions_per_seq
        head = 6 * (m.hidden_size * m.hidden_size + m.hidden_size * m.vocab_size) * predicted
        return float(head + 6 * (m.hidden_size * m.hidden_size + 2 * m.hidden_size) * b)

    def predict(
        self,
        model: Bert,
        input_ids: Array,
        *,
        positions: Array,
        segment_ids: Array,
        token_type_ids: Array | None,
    ) -> dict[str, Any]:
        """mlm_logits [B, L, V] at every position and nsp_logits [B, 2]."""
        hidden = model.encode(
            input_ids,
            token_type_ids=token_type_ids,
            segment_ids=segment_ids,
            positions=positions,
        )
        return model.heads(hidden, None)
