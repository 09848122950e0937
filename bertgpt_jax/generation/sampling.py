"""Sampling rules: next-token logits [B, V] -> chosen ids [B], as pure functions.

The rules are applied in one fixed order, the order of transformers' `generate` warpers:

    temperature -> top-k -> top-p (nucleus) -> min-p -> sample

Temperature divides the logits; top-k keeps the k largest; top-p keeps the smallest set of
largest tokens whose probabilities sum to at least p (the token that crosses p is kept, so at
least one token always survives); min-p keeps the tokens whose probability is at least
`min_p` times the largest one's. Each filter sees the distribution the previous ones left
(renormalised), and the sample is drawn from what survives all of them. Temperature 0 means
greedy: the argmax of the raw logits, with no key used.

Which filters are on is static (`SamplingRule`: it changes the compiled program, since top-k
and top-p need a sort over the vocabulary); their values are traced arrays, so a new
temperature, k or p never recompiles.

Randomness is a pure function of (seed, prompt, position): `row_keys` folds each row's own seed
and a hash of its prompt ids into a key, and `step_keys` folds in the absolute position of the
token being sampled. A row's key never depends on the batch it runs in or its place there, so a
prompt samples the same continuation alone or in any batch; identical prompts with one seed
sample identically (pass a list of seeds for several samples of one prompt).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingRule:
    """Which rules are active (static: part of the compiled program's identity)."""

    greedy: bool = False
    top_k: bool = False
    top_p: bool = False
    min_p: bool = False


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The values of the rules, traced (float32/int32 scalars)."""

    temperature: Array
    top_k: Array
    top_p: Array
    min_p: Array


jax.tree_util.register_dataclass(
    SamplingParams, data_fields=["temperature", "top_k", "top_p", "min_p"], meta_fields=[]
)


def make_params(
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[SamplingRule, SamplingParams]:
    """The static rule set and the traced values for user-facing settings (0/1.0/0.0 = off)."""
    rule = SamplingRule(
        greedy=temperature == 0.0, top_k=top_k > 0, top_p=top_p < 1.0, min_p=min_p > 0.0
    )
    values = SamplingParams(
        temperature=jnp.float32(temperature if temperature > 0 else 1.0),
        top_k=jnp.int32(top_k),
        top_p=jnp.float32(top_p),
        min_p=jnp.float32(min_p),
    )
    return rule, values


def filter_logits(logits: Array, rule: SamplingRule, params: SamplingParams) -> Array:
    """logits [B, V] float32 -> the tempered logits with filtered-out tokens at -inf."""
    logits = logits.astype(jnp.float32) / params.temperature
    if rule.top_k or rule.top_p:
        sorted_desc = -jnp.sort(-logits, axis=-1)  # [B, V], largest first
        if rule.top_k:
            kth = jnp.take(sorted_desc, jnp.clip(params.top_k, 1, logits.shape[-1]) - 1, axis=-1)
            keep_sorted = sorted_desc >= kth[:, None]
            logits = jnp.where(logits >= kth[:, None], logits, _NEG_INF)
            sorted_desc = jnp.where(keep_sorted, sorted_desc, _NEG_INF)
        if rule.top_p:
            probs = jax.nn.softmax(sorted_desc, axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly larger tokens
            # The smallest logit kept: the last sorted token whose predecessors sum below p.
            kept = before < params.top_p
            cutoff = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1)  # [B]
            logits = jnp.where(logits >= cutoff[:, None], logits, _NEG_INF)
    if rule.min_p:
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
        top = jnp.max(logits, axis=-1, keepdims=True)
        logits = jnp.where(logits >= top + jnp.log(params.min_p), logits, _NEG_INF)
    return logits


def choose(logits: Array, keys: Array, rule: SamplingRule, params: SamplingParams) -> Array:
    """logits [B, V], keys [B] (one per row) -> token ids [B] int32."""
    if rule.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, rule, params)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)


def prompt_hash(ids: Sequence[int]) -> int:
    """A 31-bit hash of a prompt's token ids (crc32), the same on every host and run."""
    return zlib.crc32(np.asarray(ids, np.int64).tobytes()) & 0x7FFFFFFF


def row_keys(seeds: Array, hashes: Array) -> Array:
    """seeds [B], hashes [B] int32 -> one key per row: fold_in(key(seed), prompt hash)."""
    return jax.vmap(lambda s, h: jax.random.fold_in(jax.random.key(s), h))(seeds, hashes)


def step_keys(keys: Array, positions: Array) -> Array:
    """keys [B], positions [B] (the absolute position of the token being drawn) -> keys [B]."""
    return jax.vmap(jax.random.fold_in)(keys, positions)
