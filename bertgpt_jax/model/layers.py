"""Building blocks of the shared core: parameters, dense layers, LayerNorm, embeddings,
multi-head attention (through `jax.nn.dot_product_attention`), the MLP, dropout and masks.

Every parameter carries its logical axis names (`out_sharding` metadata, see
parallel/sharding.py) and is created in float32. Matmul inputs are cast to the configured
compute dtype and accumulate in float32 (`preferred_element_type`); LayerNorm and softmax run in
float32. Dropout is explicit: each call takes a PRNG key, or None for deterministic evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.ops.cross_entropy import mask_padded_vocab
from bertgpt_jax.ops.dropout import dropout
from bertgpt_jax.ops.gelu import activation
from bertgpt_jax.ops.matmul import matmul
from bertgpt_jax.parallel import sharding as sh

Array = jax.Array


def param(key: Array, shape: Sequence[int], axes: Sequence[str | None], std: float) -> nnx.Param:
    """A float32 parameter, normal(0, std) or zeros (std=0) or ones (std<0), with logical axes."""
    if std > 0:
        value = std * jax.random.truncated_normal(key, -2.0, 2.0, tuple(shape), jnp.float32)
    elif std == 0:
        value = jnp.zeros(tuple(shape), jnp.float32)
    else:
        value = jnp.ones(tuple(shape), jnp.float32)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Dense(nnx.Module):
    """y = x @ kernel + bias over the last axis; the kernel may have a multi-axis output."""

    def __init__(
        self,
        in_dim: int,
        out_shape: Sequence[int],
        axes: Sequence[str | None],
        config: ModelConfig,
        key: Array,
    ):
        self.kernel = param(key, (in_dim, *out_shape), axes, config.initializer_range)
        self.bias = param(key, tuple(out_shape), axes[1:], 0.0)
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        # Flattened to a plain 2-D matmul [rows, in] x [in, out]: XLA:CPU runs bf16 x bf16 -> f32
        # only for canonical dot layouts, and the written-out backward stays canonical too.
        kernel = self.kernel[...]
        y = matmul(
            "xz,zn->xn", x.reshape(-1, x.shape[-1]), kernel.reshape(kernel.shape[0], -1), self.dtype
        )
        return y.reshape(*x.shape[:-1], *kernel.shape[1:]) + self.bias[...]


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = param(jax.random.key(0), (dim,), (sh.EMBED,), -1.0)
        self.bias = param(jax.random.key(0), (dim,), (sh.EMBED,), 0.0)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


def _lookup(table: Array, ids: Array) -> Array:
    """Rows of an embedding table. The table is gathered whole first (FSDP gathers it anyway):
    a gather from a table sharded along vocab or embed would make XLA replicate the output."""
    return jnp.take(sh.constrain(table, (None, None)), ids, axis=0)


class Embeddings(nnx.Module):
    """Token + learned absolute position (+ token type) embeddings; the token table is also
    the tied output layer of both families."""

    def __init__(self, config: ModelConfig, key: Array):
        k_tok, k_pos, k_type = jax.random.split(key, 3)
        std = config.initializer_range
        d = config.hidden_size
        # Padded to model.vocab_multiple rows; the padding is never predicted (see attend).
        self.token = param(k_tok, (config.padded_vocab_size, d), (sh.VOCAB, sh.EMBED), std)
        self.vocab_size = config.vocab_size
        self.position = param(k_pos, (config.max_len, d), (None, sh.EMBED), std)
        self.token_type = (
            param(k_type, (config.type_vocab_size, d), (None, sh.EMBED), std)
            if config.type_vocab_size > 0
            else None
        )

    def __call__(self, input_ids: Array, positions: Array, token_type_ids: Array | None) -> Array:
        # [B, L] -> [B, L, D]
        x = _lookup(self.token[...], input_ids) + _lookup(self.position[...], positions)
        if self.token_type is not None:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + _lookup(self.token_type[...], types)
        return sh.constrain(x, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED))

    def attend(self, x: Array, dtype: jnp.dtype) -> Array:
        """The tied output projection: [..., D] -> [..., V] logits in float32 (V the padded
        vocabulary; its padding columns at the float32 minimum)."""
        y = matmul("xd,vd->xv", x.reshape(-1, x.shape[-1]), self.token[...], dtype)
        y = mask_padded_vocab(y, self.vocab_size)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def attention_mask(segment_ids: Array, causal: bool) -> Array:
    """[B, L] packed-segment ids (0 = padding) -> boolean mask [B, 1, L, L].

    A token attends only to tokens of its own segment (and, if causal, not to later ones).
    Padding attends to padding, so no row is fully masked and no NaN can appear.
    """
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    if causal:
        length = segment_ids.shape[1]
        mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    return mask


class KvCache(NamedTuple):
    """The key/value cache for generation as one layer sees it: the stacked key, value
    [layers, B, H, T, K], this layer's index, and per row the slot `start` [B] int32 at which
    the current call's first token is written (its position). Writes scatter into the stacked
    arrays, so a cache carried through a loop is updated in place, never copied. Heads come
    before slots so that a decode step reads each head's keys and values as one contiguous
    [T, K] matrix (XLA:CPU ran a step's attention 1.6x faster than on [B, T, H, K])."""

    key: Array
    value: Array
    layer: Array | int
    start: Array

    def write(self, k: Array, v: Array) -> KvCache:
        """The cache with k, v [B, L, H, K] written at each row's slots start .. start + L - 1."""
        b, length = k.shape[:2]
        rows = jnp.arange(b)[:, None]  # [B, 1]
        slots = self.start[:, None] + jnp.arange(length)[None, :]  # [B, L]
        # Indices around the heads slice: the indexed [B, L] come first, so k fits as it is.
        key = self.key.at[self.layer, rows, :, slots].set(k.astype(self.key.dtype))
        value = self.value.at[self.layer, rows, :, slots].set(v.astype(self.value.dtype))
        names = (None, sh.ACT_BATCH, sh.ACT_HEADS, None, None)
        return self._replace(key=sh.constrain(key, names), value=sh.constrain(value, names))

    def read(self) -> tuple[Array, Array]:
        """This layer's keys and values [B, H, T, K]."""
        index = jax.lax.dynamic_index_in_dim
        return index(self.key, self.layer, 0, False), index(self.value, self.layer, 0, False)


def _single_query_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q [B, 1, H, K] against k, v [B, H, T, K] with mask [B, 1, 1, T] -> [B, 1, H, K]: a
    decode step's attention, two matrix-vector products per head."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bhk,bhtk->bht", q[:, 0], k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, 0], logits * scale, jnp.finfo(jnp.float32).min)  # [B, H, T]
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bht,bhtk->bhk", probs, v, preferred_element_type=jnp.float32)
    return out[:, None].astype(q.dtype)


def cache_mask(index: Array, length: int, cache_len: int) -> Array:
    """The causal mask [B, 1, L, T] of L new tokens at cache positions index .. index + L - 1
    against T cache slots: slot t is visible to the token at position p when t <= p, so
    slots beyond a row's own tokens (padding, stale values) are never read."""
    query = index[:, None] + jnp.arange(length)[None, :]  # [B, L]
    return (jnp.arange(cache_len)[None, None, :] <= query[:, :, None])[:, None]


class Attention(nnx.Module):
    """Multi-head self-attention with separate Q, K, V projections of shape [D, H, K]."""

    def __init__(self, config: ModelConfig, key: Array):
        kq, kk, kv, ko = jax.random.split(key, 4)
        d, h, k = config.hidden_size, config.num_heads, config.head_dim
        axes = (sh.EMBED, sh.HEADS, sh.HEAD_DIM)
        self.query = Dense(d, (h, k), axes, config, kq)
        self.key = Dense(d, (h, k), axes, config, kk)
        self.value = Dense(d, (h, k), axes, config, kv)
        self.out_kernel = param(
            ko, (h, k, d), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), config.initializer_range
        )
        self.out_bias = param(ko, (d,), (sh.EMBED,), 0.0)
        self.dtype = jnp.dtype(config.dtype)
        self.impl = config.attention_impl
        self.dropout_rate = config.attention_dropout_rate

    def __call__(
        self, x: Array, mask: Array, key: Array | None, cache: KvCache | None = None
    ) -> tuple[Array, KvCache | None]:
        """x [B, L, D]; mask [B, 1, L, L], or [B, 1, L, T] with a cache: this call's keys and
        values are written into the cache at each row's index and the queries attend to all T
        cached positions the mask allows. Returns the output [B, L, D] and the updated cache."""
        heads = (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_HEADS, None)
        q = sh.constrain(self.query(x), heads).astype(self.dtype)  # [B, L, H, K]
        k = sh.constrain(self.key(x), heads).astype(self.dtype)
        v = sh.constrain(self.value(x), heads).astype(self.dtype)
        if cache is not None:
            cache = cache.write(k, v)
            k, v = cache.read()  # [B, H, T, K]
            if q.shape[1] > 1:  # prefill: attend in the usual layout
                k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, T, H, K]
        if cache is not None and q.shape[1] == 1:
            out = _single_query_attention(q, k, v, mask)
        elif key is None or self.dropout_rate == 0.0:
            k, v = k.astype(self.dtype), v.astype(self.dtype)
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.impl)
        else:
            out = self._attention_with_dropout(q, k, v, mask, key)
        out = sh.constrain(out, heads)  # [B, L, H, K]
        b, length, h, hk = out.shape
        w = self.out_kernel[...].reshape(h * hk, -1)  # [H*K, D]
        y = matmul("xz,zn->xn", out.reshape(b * length, h * hk), w, self.dtype)
        y = y.reshape(b, length, -1) + self.out_bias[...]
        return sh.constrain(y, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED)), cache

    def _attention_with_dropout(
        self, q: Array, k: Array, v: Array, mask: Array, key: Array
    ) -> Array:
        # jax.nn.dot_product_attention has no dropout on the probabilities, which BERT and GPT-2
        # pretraining use (attention_probs_dropout_prob=0.1); the same math written out for XLA.
        # The einsums take q, k, v in their [B, L, H, K] layout and leave the transposes to XLA:
        # XLA:CPU runs a batched bf16 matmul whose operand is a transpose of ours in float32
        # (it converts both inputs; 36 of them per step in a 6-layer profile), its own in bf16.
        scale = q.shape[-1] ** -0.5
        logits = matmul("bqhk,bshk->bhqs", q, k, self.dtype) * scale
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = dropout(probs, self.dropout_rate, key)
        return matmul("bhqs,bshk->bqhk", probs, v, self.dtype)  # [B, L, H, K]


class Mlp(nnx.Module):
    def __init__(self, config: ModelConfig, key: Array):
        ki, ko = jax.random.split(key)
        self.wi = Dense(config.hidden_size, (config.mlp_dim,), (sh.EMBED, sh.MLP), config, ki)
        self.wo = Dense(config.mlp_dim, (config.hidden_size,), (sh.MLP, sh.EMBED), config, ko)
        self.activation = config.activation

    def __call__(self, x: Array) -> Array:
        h = activation(self.activation, self.wi(x))  # [B, L, F]
        h = sh.constrain(h, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_MLP))
        return sh.constrain(self.wo(h), (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED))
