"""Pretraining objectives: which model outputs feed which loss function, per family.

BERT: masked LM at the gathered positions + the sentence-pair task (NSP or SOP) with a
configurable weight (0 turns it off, as RoBERTa). GPT: next-token prediction. An objective
returns per-term `LossSums`; the scalar to differentiate divides each term's sum by that term's
weight over the *whole* global batch (`term_weights`), so splitting the batch into microbatches
and summing their gradients gives exactly the full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from bertgpt_jax.config import Config
from bertgpt_jax.losses import LossSums, masked_lm_loss, next_sentence_loss, tied_causal_lm_loss
from bertgpt_jax.model import Bert, Gpt, Model

Array = jax.Array
Batch = Mapping[str, Array]


def bert_terms(model: Bert, batch: Batch, key: Array | None) -> dict[str, LossSums]:
    out = model(
        batch["input_ids"],
        batch["token_type_ids"],
        batch["segment_ids"],
        batch["mlm_positions"],
        key=key,
    )
    return {
        "mlm": masked_lm_loss(out["mlm_logits"], batch["mlm_ids"], batch["mlm_weights"]),
        "nsp": next_sentence_loss(out["nsp_logits"], batch["nsp_labels"]),
    }


def gpt_terms(model: Gpt, batch: Batch, key: Array | None) -> dict[str, LossSums]:
    # The tied head and the loss as one operation (losses.tied_causal_lm_loss): the same sums
    # as causal_lm_loss(model(...)["logits"], ...), with a cheaper backward.
    hidden = model.encode(batch["input_ids"], batch["positions"], batch["segment_ids"], key=key)
    lm = tied_causal_lm_loss(
        hidden,
        model.output_embedding(),
        batch["targets"],
        batch["loss_weights"],
        model.config.dtype,
    )
    return {"lm": lm}


def loss_terms(model: Model, batch: Batch, key: Array | None) -> dict[str, LossSums]:
    if isinstance(model, Bert):
        return bert_terms(model, batch, key)
    return gpt_terms(model, batch, key)


def term_coefficients(config: Config) -> dict[str, float]:
    if config.model.family == "gpt":
        return {"lm": 1.0}
    nsp = 0.0 if config.data.pair_task == "none" else config.train.nsp_weight
    return {"mlm": 1.0, "nsp": nsp}


def term_weights(config: Config, batch: Batch) -> dict[str, Array]:
    """The denominator of each term over the whole batch (known before any forward pass)."""
    if config.model.family == "gpt":
        return {"lm": batch["loss_weights"].astype(jnp.float32).sum()}
    return {
        "mlm": batch["mlm_weights"].astype(jnp.float32).sum(),
        "nsp": jnp.asarray(batch["nsp_labels"].shape[0], jnp.float32),
    }


def scalar_loss(
    terms: Mapping[str, LossSums], coefficients: Mapping[str, float], weights: Mapping[str, Array]
) -> Array:
    total = jnp.zeros((), jnp.float32)
    for name, sums in terms.items():
        if coefficients[name]:
            total = total + coefficients[name] * sums.loss_sum / jnp.maximum(weights[name], 1e-8)
    return total


def summarize(terms: Mapping[str, LossSums], coefficients: Mapping[str, float]) -> dict[str, Array]:
    """Fixed metric names: loss, mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy, lm_loss,
    perplexity."""
    metrics: dict[str, Array] = {}
    loss = jnp.zeros((), jnp.float32)
    for name, sums in terms.items():
        mean = sums.mean()
        loss = loss + coefficients[name] * mean
        metrics[f"{name}_loss"] = mean
        if name == "lm":
            metrics["perplexity"] = jnp.exp(mean)
        else:
            metrics[f"{name}_accuracy"] = sums.accuracy()
    metrics["loss"] = loss
    return metrics
