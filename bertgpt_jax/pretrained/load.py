"""The public inference API: `load_pretrained(path)` -> a model callable on token ids.

The returned `PretrainedModel` runs a deterministic (no dropout) forward pass, jitted once per
input shape, and gives float32 logits: `mlm_logits` [B, L, V] at every position and
`nsp_logits` [B, 2] for BERT, `logits` [B, L, V] for GPT. `attention_mask` (1 = real token,
0 = padding) becomes the model's segment ids, and real tokens are numbered 0, 1, ... in order,
so padding on either side leaves the logits at real tokens unchanged (for right padding the
positions are exactly those `transformers` uses).

Which loader reads a path is decided by what the directory holds (`_LOADERS`): a HuggingFace
directory, or one of our training workdirs (the newest readable checkpoint's parameters, read
without the optimizer state).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.generation.generator import Completion, Generator
from bertgpt_jax.generation.text import TextTokenizer, load_text_tokenizer
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.hf import weights as hf
from bertgpt_jax.tasks import Task, get_task, pretraining_task

Array = jax.Array
ArrayLike = np.ndarray | jax.Array


def _is_workdir(path: Path) -> bool:
    return (path / "checkpoints").is_dir()


def _load_workdir(path: Path) -> tuple[ModelConfig, Task, Any]:
    from bertgpt_jax.pretrained.workdir import load_workdir  # Orbax is imported only when needed

    config, params, metrics = load_workdir(path)
    return config.model, get_task(config).tuned(metrics), params


Loader = Callable[[Path], tuple[ModelConfig, Task, Any]]
# (does this directory hold it?, read it -> (ModelConfig, task, params)), tried in order.
_LOADERS: tuple[tuple[Callable[[Path], bool], Loader], ...] = (
    (hf_files.is_hf_dir, hf_files.load_hf_model),
    (_is_workdir, _load_workdir),
)


def _forward(
    task: Task,
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: Array,
    token_type_ids: Array | None,
    attention_mask: Array,
) -> dict[str, Array]:
    model = nnx.merge(graphdef, state)
    segment_ids = attention_mask.astype(jnp.int32)  # [B, L], 0 = padding
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)  # real tokens 0, 1, ...
    out = task.predict(
        model,
        input_ids,
        positions=positions,
        segment_ids=segment_ids,
        token_type_ids=token_type_ids,
    )
    return {name: _real_vocab(value, model.config) for name, value in out.items()}


def _real_vocab(value: Array, config: ModelConfig) -> Array:
    """float32 `value`, its vocabulary padding (model.vocab_multiple) cut off: logits have the
    real vocabulary size."""
    if (
        config.padded_vocab_size != config.vocab_size
        and value.shape[-1] == config.padded_vocab_size
    ):
        value = value[..., : config.vocab_size]
    return value.astype(jnp.float32)


class PretrainedModel:
    """A model with fixed weights: `model(input_ids, token_type_ids=None, attention_mask=None)`."""

    def __init__(
        self,
        config: ModelConfig,
        params: Mapping[str, Any],
        task: Task | None = None,
        *,
        tokenizer: TextTokenizer | None = None,
        eos_id: int | None = None,
    ):
        self.task = task or pretraining_task(config)
        hf.check_params(params, config, self.task)
        self.config = config
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None or tokenizer is None else tokenizer.eos_id
        self._generators: dict[Mesh | None, Generator] = {}
        graphdef, state = nnx.split(self.task.abstract_model(config))
        nnx.replace_by_pure_dict(
            state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), dict(params))
        )
        self._state, self._graphdef = state, graphdef
        # The graph definition is static; jit retraces only for a new input shape.
        self._forward = jax.jit(functools.partial(_forward, self.task, graphdef))

    @property
    def params(self) -> dict[str, Any]:
        """The float32 parameters as a nested dict of arrays (our layout, layers stacked)."""
        return self._state.to_pure_dict()

    def _check(self, name: str, value: ArrayLike, shape: tuple[int, ...], limit: int) -> Array:
        array = np.asarray(value)
        if array.shape != shape or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"{name} must be an integer array of shape {shape}, got {array.dtype} {array.shape}"
            )
        if array.size and (array.min() < 0 or array.max() >= limit):
            raise ValueError(
                f"{name} values must lie in [0, {limit}), got {array.min()} to {array.max()}"
            )
        return jnp.asarray(array, jnp.int32)

    def __call__(
        self,
        input_ids: ArrayLike,
        token_type_ids: ArrayLike | None = None,
        attention_mask: ArrayLike | None = None,
    ) -> dict[str, Array]:
        """input_ids, token_type_ids, attention_mask: int [B, L] -> dict of float32 logits."""
        config = self.config
        shape = np.shape(input_ids)
        if len(shape) != 2 or shape[1] > config.max_len:
            raise ValueError(
                f"input_ids must have shape [batch, length] with length <= {config.max_len}, "
                f"got {shape}"
            )
        ids = self._check("input_ids", input_ids, shape, config.vocab_size)
        mask = (
            jnp.ones(shape, jnp.int32)
            if attention_mask is None
            else self._check("attention_mask", attention_mask, shape, 2)
        )
        types = None
        if token_type_ids is not None:
            if config.type_vocab_size == 0:
                raise ValueError(
                    "this model takes no token_type_ids (it has no token-type embeddings)"
                )
            types = self._check("token_type_ids", token_type_ids, shape, config.type_vocab_size)
        return self._forward(self._state, ids, types, mask)

    def generator(self, mesh: Mesh | None = None) -> Generator:
        """The generation program of this model (one per mesh; it counts its compiles)."""
        if mesh not in self._generators:
            self._generators[mesh] = Generator(self.config, self._graphdef, self._state, mesh)
        return self._generators[mesh]

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        max_new_tokens: int = 32,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        seed: int | Sequence[int] = 0,
        stop: Sequence[int | str] | str | None = None,
        mesh: Mesh | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Completion]:
        """Continues each prompt (a string or a token-id list) with up to max_new_tokens ids.

        temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 are off; the rules apply in that
        order (generation/sampling.py). `seed` is one seed or one per prompt: a row's draws
        depend only on its seed, its prompt and the position. Generation stops at the
        tokenizer's EOS, at `stop` ids or strings, or after max_new_tokens. `mesh` shards
        parameters and cache; `on_text` receives the text of a single prompt as it is
        produced. Returns per prompt a `Completion`: the new ids, their log-probabilities under
        the model, the text, and the stop reason.
        """
        from bertgpt_jax.generation.api import generate

        return generate(
            self, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, seed=seed, stop=stop, mesh=mesh, on_text=on_text,
        )  # fmt: skip

    def fill_mask(
        self, texts: str | Sequence[str | Sequence[int]], top_k: int = 5
    ) -> list[list[list[dict[str, Any]]]]:
        """For each text, for each [MASK] in it, the top_k (token_id, token, score) guesses."""
        from bertgpt_jax.generation.api import fill_mask

        return fill_mask(self, texts, top_k)


def _eos_id(path: Path) -> int | None:
    """config.json's eos_token_id, where a HuggingFace directory gives one."""
    if not hf_files.is_hf_dir(path):
        return None
    eos = json.loads((path / "config.json").read_text()).get("eos_token_id")
    return eos if isinstance(eos, int) else None


def load_pretrained(
    path: str | Path, dtype: Literal["float32", "bfloat16"] | None = None
) -> PretrainedModel:
    """Loads a HuggingFace directory (config.json + model.safetensors) for inference.

    `dtype` ("float32" or "bfloat16") overrides the matmul compute dtype; parameters, softmax,
    LayerNorm and the returned logits stay float32.
    """
    # A remote path can be a training workdir (gs://...); HF directories are read locally.
    path = fs.as_path(path) if fs.is_remote(path) else fs.require_local(path, "load_pretrained")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; pass a HuggingFace model directory.")
    for holds, read in _LOADERS:
        if holds(path):
            config, task, params = read(path)
            if dtype is not None:
                if dtype not in ("float32", "bfloat16"):
                    raise ConfigError(f"dtype={dtype!r} is not valid; use float32 or bfloat16.")
                config = dataclasses.replace(config, dtype=dtype)
            return PretrainedModel(
                config, params, task, tokenizer=load_text_tokenizer(path), eos_id=_eos_id(path)
            )
    raise ConfigError(
        f"{path} holds no model bertgpt-jax can load: a HuggingFace directory needs "
        "config.json and model.safetensors (write one with `save_pretrained` or "
        "hf_files.save_hf), a training workdir needs checkpoints/ (run `bertgpt train`)."
    )
