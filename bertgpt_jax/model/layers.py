"""Building blocks of the shared core: parameters, dense layers, LayerNorm, embeddings,
multi-head attention (through `jax.nn.dot_product_attention`), the MLP, dropout and masks.

Every parameter carries its logical axis names (`out_sharding` metadata, see sharding.py) and
is created in float32. Matmul inputs are cast to the configured compute dtype and accumulate in
float32 (`preferred_element_type`); LayerNorm and softmax run in float32. Dropout is explicit:
each call takes a PRNG key, or None for deterministic evaluation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax import sharding as sh
from bertgpt_jax.config import ModelConfig

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


def _fmix32(x: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection that mixes every input bit into every
    output bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout. The keep mask is a counter-based hash of each element's index under
    two 32-bit words drawn from `key` (two keyed finaliser rounds, in the spirit of Philox):
    a few integer ops per element that XLA fuses into the select, where jax.random.bernoulli's
    threefry was the largest non-matmul cost of a CPU training step. Being a function of the
    global index, the mask does not depend on how the array is sharded."""
    if key is None or rate == 0.0:
        return x
    k = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0)
    for dim in range(1, x.ndim):
        index = index * jnp.uint32(x.shape[dim]) + jax.lax.broadcasted_iota(
            jnp.uint32, x.shape, dim
        )
    bits = _fmix32(_fmix32(index + k[0]) ^ k[1])
    keep = bits >= jnp.uint32(round(rate * 2**32))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_key(key: Array | None, n: int) -> list[Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def matmul(eq: str, x: Array, w: Array, dtype: jnp.dtype) -> Array:
    """einsum with inputs in the compute dtype and a float32 result.

    In float32 this is a plain einsum. In a narrower dtype the backward pass is written out
    (`_low_precision_einsum`): JAX's own transpose would multiply the float32 cotangent with the
    bfloat16 operand, which XLA runs as a float32 matmul; here both backward matmuls take
    bfloat16 inputs and accumulate in float32, like the forward one (about 2x faster on CPUs
    with AVX-512 BF16, and the rule on TPU and GPU), and the residuals are stored in bfloat16.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(eq, x, w, preferred_element_type=jnp.float32)
    return _low_precision_einsum(eq, jnp.dtype(dtype).name, x, w)


def _einsum_f32(eq: str, a: Array, b: Array) -> Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def cpu_layout_barrier(x: Array) -> Array:
    """`x`, kept by XLA:CPU in the layout it was computed in. XLA:CPU runs a bf16 matmul whose
    operand it has to transpose in float32 (it converts both inputs), so the written-out
    backward materialises its transposes and this barrier keeps XLA from folding them back into
    the matmul. TPU and GPU compilers fold transposes into their matmuls for free, so there it
    is the identity: a materialised copy would only cost memory (bert_base on v5p:2x2x1, 1 GiB
    of temporaries per chip). The backend is the one tracing, so `bertgpt compile` on a CPU
    host reports TPU memory with the barriers in: on the safe side."""
    if jax.default_backend() != "cpu":
        return x
    return jax.lax.optimization_barrier(x)


def swap_last(a: Array) -> Array:
    """a with its last two axes swapped, materialised in row-major order on CPU (see
    `cpu_layout_barrier`)."""
    *lead, m, n = a.shape
    flat = cpu_layout_barrier(jnp.swapaxes(a, -1, -2).reshape(-1))
    return flat.reshape(*lead, n, m)


# Backward of each forward contraction "X,W->Y" as (dX, dW): an einsum and its two operands
# ("g" the cotangent of Y, "x"/"w" the saved inputs, "T" the materialised swap), all in
# layouts whose matmuls XLA:CPU runs in bf16.
_BACKWARD = {
    # dense: Y[x,n] = X[x,z] W[z,n]
    "xz,zn->xn": (("xn,zn->xz", "g", "w"), ("zx,xn->zn", "Tx", "g")),
    # tied output head: Y[x,v] = X[x,d] E[v,d]
    "xd,vd->xv": (("xv,vd->xd", "g", "w"), ("vx,xd->vd", "Tg", "x")),
    # attention scores: S[b,h,q,s] = Q[b,q,h,k] K[b,s,h,k]
    "bqhk,bshk->bhqs": (("bhqs,bshk->bqhk", "g", "w"), ("bhqs,bqhk->bshk", "g", "x")),
    # attention context: O[b,q,h,k] = P[b,h,q,s] V[b,s,h,k]
    "bhqs,bshk->bqhk": (("bqhk,bshk->bhqs", "g", "w"), ("bhqs,bqhk->bshk", "x", "g")),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_einsum(eq: str, dtype: str, x: Array, w: Array) -> Array:
    return _einsum_f32(eq, x.astype(dtype), w.astype(dtype))


def _low_precision_fwd(eq: str, dtype: str, x: Array, w: Array) -> tuple[Array, tuple]:
    if eq not in _BACKWARD:
        raise ValueError(f"no low-precision backward for einsum {eq!r}; add it to _BACKWARD")
    xc, wc = x.astype(dtype), w.astype(dtype)
    # Zero-size markers carry the input dtypes (residuals must be arrays).
    return _einsum_f32(eq, xc, wc), (xc, wc, jnp.zeros(0, x.dtype), jnp.zeros(0, w.dtype))


def _low_precision_bwd(eq: str, dtype: str, res: tuple, g: Array) -> tuple[Array, Array]:
    xc, wc, x_marker, w_marker = res
    operands = {"x": xc, "w": wc, "g": g.astype(dtype)}

    def operand(name: str) -> Array:
        return swap_last(operands[name[1]]) if name.startswith("T") else operands[name]

    (eq_dx, a_dx, b_dx), (eq_dw, a_dw, b_dw) = _BACKWARD[eq]
    dx = _einsum_f32(eq_dx, operand(a_dx), operand(b_dx))
    dw = _einsum_f32(eq_dw, operand(a_dw), operand(b_dw))
    return dx.astype(x_marker.dtype), dw.astype(w_marker.dtype)


_low_precision_einsum.defvjp(_low_precision_fwd, _low_precision_bwd)


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


def activation(name: str, x: Array) -> Array:
    # BERT uses the exact erf GELU; GPT-2 the tanh approximation ("gelu_new").
    return _gelu(name == "gelu_tanh", x)


_SQRT_2_OVER_PI = (2 / math.pi) ** 0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gelu(tanh: bool, x: Array) -> Array:
    """GELU with a backward that keeps only its input: autodiff saves several float32
    intermediates of the activation's size ([B, L, F], the largest per layer), which a scanned
    layer stack copies into its loop buffers. The exact form is written with erf, as BERT and
    transformers define it (jax.nn.gelu(approximate=False) uses erfc, half as fast on XLA:CPU;
    max error 1e-6 against float64 either way)."""
    if tanh:
        return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + jax.lax.erf(x * 2**-0.5))


def _gelu_fwd(tanh: bool, x: Array) -> tuple[Array, Array]:
    return _gelu(tanh, x), x


def _gelu_bwd(tanh: bool, x: Array, g: Array) -> tuple[Array]:
    if tanh:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)
    cdf = 0.5 * (1.0 + jax.lax.erf(x * 2**-0.5))
    pdf = jnp.exp(-0.5 * x * x) * (2 * math.pi) ** -0.5
    return (g * (cdf + x * pdf),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


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
        self.token = param(k_tok, (config.vocab_size, d), (sh.VOCAB, sh.EMBED), std)
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
        """The tied output projection: [..., D] -> [..., V] logits in float32."""
        y = matmul("xd,vd->xv", x.reshape(-1, x.shape[-1]), self.token[...], dtype)
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

    def __call__(self, x: Array, mask: Array, key: Array | None) -> Array:
        # x [B, L, D]; mask [B, 1, L, L]
        heads = (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_HEADS, None)
        q = sh.constrain(self.query(x), heads).astype(self.dtype)  # [B, L, H, K]
        k = sh.constrain(self.key(x), heads).astype(self.dtype)
        v = sh.constrain(self.value(x), heads).astype(self.dtype)
        if key is None or self.dropout_rate == 0.0:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.impl)
        else:
            out = self._attention_with_dropout(q, k, v, mask, key)
        out = sh.constrain(out, heads)  # [B, L, H, K]
        b, length, h, hk = out.shape
        w = self.out_kernel[...].reshape(h * hk, -1)  # [H*K, D]
        y = matmul("xz,zn->xn", out.reshape(b * length, h * hk), w, self.dtype)
        y = y.reshape(b, length, -1) + self.out_bias[...]
        return sh.constrain(y, (sh.ACT_BATCH, sh.ACT_SEQ, sh.ACT_EMBED))

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
