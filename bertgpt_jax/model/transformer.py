"""The shared transformer core: embeddings, a scanned stack of blocks, optional final norm.

It knows nothing of BERT or GPT: the family only chooses causal or bidirectional attention,
LayerNorm placement (post-LN with an embedding norm, as BERT; pre-LN with a final norm, as
GPT-2) and whether token-type embeddings exist. The blocks' parameters are stacked along a
leading `layers` axis and applied with `jax.lax.scan`, so compile time does not grow with depth;
`scan_layers=False` applies the same stacked parameters in a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.model.layers import (
    Attention,
    Embeddings,
    KvCache,
    LayerNorm,
    Mlp,
    attention_mask,
    cache_mask,
)
from bertgpt_jax.ops.dropout import dropout, split_key
from bertgpt_jax.ops.unstack import is_tuple, unstack_layers
from bertgpt_jax.parallel import sharding as sh

Array = jax.Array

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """One transformer layer: attention and MLP sublayers with residuals, post- or pre-LN."""

    def __init__(self, config: ModelConfig, key: Array):
        ka, km = jax.random.split(key)
        self.attention = Attention(config, ka)
        self.mlp = Mlp(config, km)
        self.attention_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.pre_norm = config.norm_position == "pre"
        self.dropout_rate = config.dropout_rate

    def __call__(
        self, x: Array, mask: Array, key: Array | None, cache: KvCache | None = None
    ) -> tuple[Array, KvCache | None]:
        k_attn, k_attn_out, k_mlp_out = split_key(key, 3)
        if self.pre_norm:
            h, cache = self.attention(self.attention_norm(x), mask, k_attn, cache)
            x = x + dropout(h, self.dropout_rate, k_attn_out)
            h = self.mlp(self.mlp_norm(x))
            return x + dropout(h, self.dropout_rate, k_mlp_out), cache
        h, cache = self.attention(x, mask, k_attn, cache)
        x = self.attention_norm(x + dropout(h, self.dropout_rate, k_attn_out))
        h = self.mlp(x)
        return self.mlp_norm(x + dropout(h, self.dropout_rate, k_mlp_out)), cache


def _stack_state(config: ModelConfig, key: Array) -> tuple[nnx.GraphDef, nnx.State]:
    """Creates num_layers blocks with vmap; their parameters gain a leading `layers` axis."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(config, jax.random.key(0))))
    keys = jax.random.split(key, config.num_layers)
    state = jax.vmap(lambda k: nnx.state(Block(config, k)))(keys)

    def add_layer_axis(v: nnx.Variable) -> nnx.Variable:
        return v.replace(out_sharding=(sh.LAYERS, *v.get_metadata()["out_sharding"]))

    state = jax.tree.map(add_layer_axis, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return graphdef, state


class Transformer(nnx.Module):
    """Shared core: [B, L] token ids -> [B, L, D] hidden states."""

    def __init__(self, config: ModelConfig, key: Array):
        k_emb, k_layers = jax.random.split(key)
        self.config = config
        self.embeddings = Embeddings(config, k_emb)
        self.embedding_norm = (
            LayerNorm(config.hidden_size, config.layer_norm_eps)
            if config.norm_position == "post"
            else None
        )
        graphdef, state = _stack_state(config, k_layers)
        self.layers = nnx.merge(graphdef, state)
        self.final_norm = (
            LayerNorm(config.hidden_size, config.layer_norm_eps)
            if config.norm_position == "pre"
            else None
        )

    def __call__(
        self,
        input_ids: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        token_type_ids: Array | None = None,
        key: Array | None = None,
    ) -> Array:
        """input_ids, positions, segment_ids (0 = padding), token_type_ids: int [B, L]."""
        batch, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        k_emb, k_layers = split_key(key, 2)
        x = self.embeddings(input_ids, positions, token_type_ids)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = dropout(x, self.config.dropout_rate, k_emb)
        mask = attention_mask(segment_ids, self.config.causal)
        x = self._apply_layers(x, mask, k_layers)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x  # [B, L, D]

    def _apply_layers(self, x: Array, mask: Array, key: Array | None) -> Array:
        graphdef, state = nnx.split(self.layers)
        n = self.config.num_layers
        keys: Any = None if key is None else jax.random.split(key, n)

        def body(h: Array, xs: tuple[nnx.State, Array | None]) -> tuple[Array, None]:
            layer_state, layer_key = xs
            h, _ = nnx.merge(graphdef, layer_state)(h, mask, layer_key)
            return sh.constrain(h, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED)), None

        if self.config.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.config.remat])
        if self.config.scan_layers:
            x, _ = jax.lax.scan(body, x, (state, keys))
            return x
        per_layer = jax.tree.map(unstack_layers, state)  # leaves become n-tuples
        for i in range(n):
            layer = jax.tree.map(lambda t, i=i: t[i], per_layer, is_leaf=is_tuple)
            x, _ = body(x, (layer, None if keys is None else keys[i]))
        return x

    def layer_states(self) -> list[nnx.State]:
        """Each layer's parameters, sliced from the stack: for a loop that applies the layers
        many times (generation), which then slices them once instead of at every step."""
        state = nnx.state(self.layers)
        return [jax.tree.map(lambda t, i=i: t[i], state) for i in range(self.config.num_layers)]

    def decode(
        self,
        input_ids: Array,
        cache: tuple[Array, Array],
        index: Array,
        *,
        layers: Sequence[nnx.State] | None = None,
    ) -> tuple[Array, tuple[Array, Array]]:
        """The generation forward pass: input_ids [B, L] at positions index .. index + L - 1 of
        each row (index [B] int32), attending to the stacked cache (key, value
        [layers, B, H, T, K]) and writing their own keys and values into it. Prefill is L =
        prompt length at index 0; a decode step is L = 1 at each row's length. The layers are
        scanned or unrolled as in training, or unrolled over `layers` (from `layer_states`).
        Returns the hidden states [B, L, D] and the updated cache. Deterministic (no dropout)."""
        length = input_ids.shape[1]
        positions = index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]  # [B, L]
        x = self.embeddings(input_ids, positions, None)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        mask = cache_mask(index, length, cache[0].shape[3])  # [B, 1, L, T]
        graphdef, state = nnx.split(self.layers)

        def body(carry: tuple, xs: tuple[nnx.State, Array | int]) -> tuple[tuple, None]:
            # The whole cache rides in the carry and each layer scatters into its own slice in
            # place (a scan output would rewrite the whole cache every step).
            h, keys, values = carry
            layer_state, i = xs
            layer_cache = KvCache(keys, values, i, index)
            h, new = nnx.merge(graphdef, layer_state)(h, mask, None, layer_cache)
            assert new is not None
            h = sh.constrain(h, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED))
            return (h, new.key, new.value), None

        layer_ids = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        carry = (x, *cache)
        if layers is not None:
            for i, layer in enumerate(layers):
                carry, _ = body(carry, (layer, i))
        elif self.config.scan_layers:
            carry, _ = jax.lax.scan(body, carry, (state, layer_ids))
        else:
            per_layer = jax.tree.map(unstack_layers, state)
            for i in range(self.config.num_layers):
                layer = jax.tree.map(lambda t, i=i: t[i], per_layer, is_leaf=is_tuple)
                carry, _ = body(carry, (layer, i))
        x, keys, values = carry
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, (keys, values)
