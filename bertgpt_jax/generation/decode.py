"""The compiled generation program: one prefill pass, then `lax.while_loop` decode steps.

    prompts [B, Lp] (right-padded) -> prefill: the core over all prompt tokens at cache index 0
        writes every layer's keys/values [layers, B, H, T, K]; logits at each row's last real
        token -> token 0
    while step < max_new and some row is running:
        the core over each row's last token at its own position (= its cache index), writing
        one cache slot per layer -> logits [B, V] -> token `step`

The model is the one that trains: `Transformer.decode` runs the same layers and parameters
with the cache carried through them, the prefill scanned or unrolled as configured, the decode
steps unrolled over the layer parameters sliced once per call (see `generate`). Each row keeps its own cache index, so ragged
prompts share a batch without left padding: a row's padding slots sit past its length, where
the causal cache mask hides them until its own tokens overwrite them.

Everything that would change the program is static (batch, prompt and output buckets, cache
length, which sampling rules are on, streaming); everything else is traced: the real prompt
lengths, max_new_tokens, seeds, stop ids and the rule values. So one compile serves every
request of one bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import io_callback

from bertgpt_jax.generation import sampling
from bertgpt_jax.parallel import sharding as sh

Array = jax.Array

CACHE_AXES = (sh.LAYERS, sh.ACT_BATCH, sh.ACT_HEADS, None, None)  # [layers, B, H, T, K]


@dataclasses.dataclass(frozen=True)
class Program:
    """The static part of a generation call: one compiled program per distinct value."""

    batch: int
    prompt_len: int
    new_tokens: int  # the output buffer's length (max_new_tokens rounded up)
    cache_len: int  # T >= prompt_len + new_tokens, capped at the model's max_len
    rule: sampling.SamplingRule
    stream: bool = False


@dataclasses.dataclass(frozen=True)
class Request:
    """The traced inputs: prompts [B, Lp] int32, lengths [B], max_new scalar, seeds and
    prompt hashes [B], stop_ids [S] (-1 = unused), active [B] (False = batch padding)."""

    prompts: Array
    lengths: Array
    max_new: Array
    seeds: Array
    hashes: Array
    stop_ids: Array
    active: Array
    params: sampling.SamplingParams


jax.tree_util.register_dataclass(
    Request,
    data_fields=[
        "prompts",
        "lengths",
        "max_new",
        "seeds",
        "hashes",
        "stop_ids",
        "active",
        "params",
    ],
    meta_fields=[],
)

# Receives (step, tokens [B], running-before-this-token [B]) from a streaming program.
_sink: list[Callable[[Any, Any, Any], None]] = []


def set_stream_sink(sink: Callable[[Any, Any, Any], None] | None) -> None:
    """Where a streaming program's tokens go (host side); None to stop."""
    _sink.clear()
    if sink is not None:
        _sink.append(sink)


def _emit(step: Any, tokens: Any, running: Any) -> None:
    if _sink:
        _sink[0](step, tokens, running)


def _choose(program: Program, request: Request, keys: Array, logits: Array, step: Array) -> tuple:
    """Token `step` of every row from logits [B, V]: (token [B], its log-probability [B])."""
    positions = request.lengths + step  # [B] the absolute position of the new token
    token = sampling.choose(
        logits, sampling.step_keys(keys, positions), program.rule, request.params
    )
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]


def _record(program: Program, request: Request, carry: dict, token: Array, logprob: Array) -> dict:
    step, running = carry["step"], carry["running"]
    if program.stream:
        io_callback(_emit, None, step, token, running, ordered=True)
    hit_stop = jnp.any(token[:, None] == request.stop_ids[None, :], axis=-1)
    return {
        **carry,
        "tokens": carry["tokens"].at[:, step].set(jnp.where(running, token, -1)),
        "logprobs": carry["logprobs"].at[:, step].set(jnp.where(running, logprob, 0.0)),
        "num_tokens": carry["num_tokens"] + running.astype(jnp.int32),
        "stopped": carry["stopped"] | (running & hit_stop),
        "running": running & ~hit_stop & (step + 1 < request.max_new),
        "last": token,
        "step": step + 1,
    }


def _logits(model: Any, hidden: Array) -> Array:
    """hidden [B, D] -> float32 logits [B, V] through the tied output layer."""
    return model.core.embeddings.attend(hidden, jnp.dtype(model.config.dtype))


def generate(
    program: Program, graphdef: nnx.GraphDef, state: nnx.State, request: Request
) -> dict[str, Array]:
    """Runs prefill and the decode loop. Returns tokens [B, N] (-1 past a row's end),
    logprobs [B, N], num_tokens [B] (including a stop token) and stopped [B] (ended on a
    stop id rather than the length limit)."""
    model = nnx.merge(graphdef, state)
    config = model.config
    b, n = program.batch, program.new_tokens
    shape = (config.num_layers, b, config.num_heads, program.cache_len, config.head_dim)
    zeros = sh.constrain(jnp.zeros(shape, jnp.dtype(config.dtype)), CACHE_AXES)
    keys = sampling.row_keys(request.seeds, request.hashes)

    hidden, cache = model.core.decode(request.prompts, (zeros, zeros), jnp.zeros(b, jnp.int32))
    last = jnp.take_along_axis(hidden, (request.lengths - 1)[:, None, None], axis=1)[:, 0]
    carry = {
        "step": jnp.int32(0),
        "tokens": jnp.full((b, n), -1, jnp.int32),
        "logprobs": jnp.zeros((b, n), jnp.float32),
        "num_tokens": jnp.zeros(b, jnp.int32),
        "stopped": jnp.zeros(b, bool),
        "running": request.active & (request.max_new > 0),
        "last": jnp.zeros(b, jnp.int32),
        "cache": cache,
    }
    token, logprob = _choose(program, request, keys, _logits(model, last), carry["step"])
    carry = _record(program, request, carry, token, logprob)

    def cond(carry: dict) -> Array:
        return (carry["step"] < request.max_new) & jnp.any(carry["running"])

    # Decode steps apply the layers unrolled over parameters sliced once, here: a scan would
    # slice (XLA:CPU: copy) every layer's weights out of the stack at every step. Matmul
    # weights are cast to the compute dtype here too, which `matmul` would do at every step
    # (the same values: it casts them anyway).
    dtype = jnp.dtype(config.dtype)
    layers = [
        jax.tree.map(lambda w: w.astype(dtype) if w.ndim >= 2 else w, layer)
        for layer in model.core.layer_states()
    ]

    def body(carry: dict) -> dict:
        index = request.lengths + carry["step"] - 1  # [B] the position of each row's last token
        hidden, cache = model.core.decode(
            carry["last"][:, None], carry["cache"], index, layers=layers
        )
        token, logprob = _choose(
            program, request, keys, _logits(model, hidden[:, 0]), carry["step"]
        )
        return _record(program, request, {**carry, "cache": cache}, token, logprob)

    carry = jax.lax.while_loop(cond, body, carry)
    return {k: carry[k] for k in ("tokens", "logprobs", "num_tokens", "stopped")}
