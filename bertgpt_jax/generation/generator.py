"""The host side of generation: checks a request, buckets its shapes, runs the compiled
program (decode.py) once per batch, and turns its arrays into one `Completion` per prompt.

Buckets: the batch, the longest prompt and max_new_tokens are each rounded up to a power of two
(prompts and outputs at least 8; the batch also to a multiple of the mesh's data-parallel
size), and the cache holds prompt bucket + output bucket slots, capped at the model's max_len.
A session of varied requests compiles once per distinct (batch bucket, prompt bucket, output
bucket, active sampling rules, streaming) and never for a new prompt length, max_new_tokens,
seed, temperature or p inside them; `compiles` counts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.generation import decode, sampling
from bertgpt_jax.parallel import sharding as sh

MAX_STOP_IDS = 16  # the stop-id vector's static length
StopReason = Literal["eos", "stop", "stop_string", "length"]


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's continuation: the new ids (without the stop token or stop string), the
    model's log-probability of each (the raw distribution, before temperature and filters),
    the decoded text (when a tokenizer is known) and why it ended."""

    ids: list[int]
    logprobs: list[float]
    text: str | None
    stop_reason: StopReason

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bucket(n: int, minimum: int, limit: int) -> int:
    """n rounded up to a power of two, at least `minimum`, at most `limit`."""
    return min(max(minimum, 1 << max(n - 1, 0).bit_length()), limit)


def _check_settings(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                    min_p: float) -> None:  # fmt: skip
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    if temperature < 0:
        raise ConfigError(f"temperature={temperature} must be >= 0 (0 means greedy).")
    if top_k < 0:
        raise ConfigError(f"top_k={top_k} must be >= 0 (0 turns it off).")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} must lie in (0, 1] (1 turns it off).")
    if not 0.0 <= min_p < 1.0:
        raise ConfigError(f"min_p={min_p} must lie in [0, 1) (0 turns it off).")


class Generator:
    """Generation with a GPT model's parameters (an nnx graphdef + state), on one device or
    sharded over `mesh` (parameters by the rules table, the cache's heads over `tensor`)."""

    def __init__(
        self, config: ModelConfig, graphdef: nnx.GraphDef, state: nnx.State, mesh: Mesh | None
    ):
        if not config.causal:
            raise ConfigError(
                f"generate needs a GPT (causal) model, but this is a {config.family} model; "
                "use fill_mask for BERT."
            )
        self.config, self.mesh, self.compiles = config, mesh, 0
        if mesh is not None:
            state = jax.device_put(state, sh.state_shardings(state, mesh))
        self._graphdef, self._state = graphdef, state
        self._run = jax.jit(self._program, static_argnums=0)

    def update(self, state: nnx.State) -> None:
        """New parameters of the same shapes and shardings (samples while training): the
        compiled programs are kept."""
        if self.mesh is not None:
            state = jax.device_put(state, sh.state_shardings(state, self.mesh))
        self._state = state

    def _program(self, program: decode.Program, state: nnx.State, request: decode.Request) -> Any:
        self.compiles += 1  # runs only when jit traces, i.e. once per compiled program
        return decode.generate(program, self._graphdef, state, request)

    def _check_prompts(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("generate needs at least one prompt, and no prompt may be empty.")
        limit, vocab = self.config.max_len, self.config.vocab_size
        longest = max(len(p) for p in prompts)
        if longest > limit:
            raise ConfigError(
                f"a prompt has {longest} tokens but the model has {limit} positions; shorten it."
            )
        if longest + max_new_tokens > limit:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} after a {longest}-token prompt overflows the "
                f"model's {limit} positions; use at most {limit - longest}."
            )
        bad = [t for p in prompts for t in p if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside the vocabulary [0, {vocab}).")

    def _program_for(self, n: int, longest: int, max_new: int, rule: Any, stream: bool) -> Any:
        limit = self.config.max_len
        multiple = 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        batch = -(-bucket(n, 1, 1 << 30) // multiple) * multiple
        prompt_len, new_tokens = bucket(longest, 8, limit), bucket(max_new, 8, limit)
        cache_len = min(prompt_len + new_tokens, limit)
        return decode.Program(batch, prompt_len, new_tokens, cache_len, rule, stream)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        seed: int | Sequence[int] = 0,
        stop_ids: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[tuple[list[int], list[float], bool]]:
        """Token ids in, per prompt (new ids including a stop id, their logprobs, whether a
        stop id ended it) out. `seed` is one seed for all prompts or one per prompt;
        `on_token` (single prompt only) receives each token as the device produces it."""
        _check_settings(max_new_tokens, temperature, top_k, top_p, min_p)
        self._check_prompts(prompts, max_new_tokens)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ConfigError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one each.")
        if len(set(stop_ids)) > MAX_STOP_IDS:
            raise ConfigError(f"at most {MAX_STOP_IDS} stop ids are supported.")
        if on_token is not None and len(prompts) != 1:
            raise ConfigError("streaming (on_token) works for a single prompt only.")
        rule, values = sampling.make_params(temperature, top_k, top_p, min_p)
        longest = max(len(p) for p in prompts)
        program = self._program_for(
            len(prompts), longest, max_new_tokens, rule, on_token is not None
        )
        request = self._request(program, prompts, max_new_tokens, seeds, stop_ids, values)
        decode.set_stream_sink(None if on_token is None else _row0_sink(on_token))
        try:
            if self.mesh is None:
                out = self._run(program, self._state, request)
            else:
                with jax.set_mesh(self.mesh):
                    out = self._run(program, self._state, request)
            out = jax.device_get(out)
        finally:
            decode.set_stream_sink(None)
        return [
            (
                out["tokens"][i, : out["num_tokens"][i]].tolist(),
                out["logprobs"][i, : out["num_tokens"][i]].tolist(),
                bool(out["stopped"][i]),
            )
            for i in range(len(prompts))
        ]

    def _request(
        self,
        program: decode.Program,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        seeds: list[int],
        stop_ids: Sequence[int],
        values: sampling.SamplingParams,
    ) -> decode.Request:
        b, n = program.batch, len(prompts)
        ids = np.zeros((b, program.prompt_len), np.int32)  # [B, Lp], right-padded
        lengths = np.ones(b, np.int32)  # batch-padding rows: one token, never running
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p
            lengths[i] = len(p)
        stops = np.full(MAX_STOP_IDS, -1, np.int32)
        unique = sorted(set(stop_ids))
        stops[: len(unique)] = unique
        hashes = [sampling.prompt_hash(p) for p in prompts] + [0] * (b - n)
        return decode.Request(
            prompts=jnp.asarray(ids),
            lengths=jnp.asarray(lengths),
            max_new=jnp.int32(max_new),
            seeds=jnp.asarray(list(seeds) + [0] * (b - n), jnp.uint32),
            hashes=jnp.asarray(hashes, jnp.uint32),
            stop_ids=jnp.asarray(stops),
            active=jnp.asarray(np.arange(b) < n),
            params=values,
        )


def _row0_sink(on_token: Callable[[int], None]) -> Callable[[Any, Any, Any], None]:
    def sink(step: Any, tokens: Any, running: Any) -> None:
        if bool(np.asarray(running)[0]):
            on_token(int(np.asarray(tokens)[0]))

    return sink
