"""Samples while training: at each evaluation, the prompts of `eval.prompts` and
`eval.prompts_file` (one per line) are continued by the KV-cache generator with the state's
current parameters, and written to WORKDIR/samples.jsonl (`{"step", "prompt", "completion"}`)
and TensorBoard text, so a user watches the model change.

A run with a chat template (sft on conversations) renders each prompt as one user turn ready
for the assistant's reply, as the model was trained. Generation stops at the tokenizer's EOS
or after eval.max_new_tokens; eval.temperature 0 (the default) is greedy, so the samples of a
resumed run are those of the uninterrupted one. The generator compiles once per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bertgpt_jax.core.config import Config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.finetune.chat import for_tokenizer
from bertgpt_jax.data.tokenizers import Tokenizer, load_tokenizer, tokenizer_location
from bertgpt_jax.generation.generator import Generator
from bertgpt_jax.training.metrics import MetricsWriter
from bertgpt_jax.training.step import Trainer, TrainState


def eval_prompts(config: Config) -> list[str]:
    prompts = list(config.eval.prompts)
    path = config.eval.prompts_file
    if path:
        if not Path(path).is_file():
            raise ConfigError(
                f"eval.prompts_file={path} is not a file; give a text file with one prompt per "
                "line."
            )
        prompts += [line for line in Path(path).read_text().splitlines() if line.strip()]
    return prompts


def prompt_ids(config: Config) -> tuple[list[str], list[list[int]], Tokenizer | None]:
    """The eval prompts, their token ids (rendered as a user turn where the run has a chat
    template) and the tokenizer; a ConfigError when one cannot be continued by
    eval.max_new_tokens within the model's positions."""
    prompts = eval_prompts(config)
    if not prompts:
        return [], [], None
    tokenizer = _tokenizer(config)
    texts = prompts
    if config.task.chat_template:
        template = for_tokenizer(config.task.chat_template, config.task.chat_roles, tokenizer)
        texts = [template.prompt(p) for p in texts]
    ids = tokenizer.encode(texts)
    room = config.model.max_len - config.eval.max_new_tokens
    for prompt, tokens in zip(prompts, ids, strict=True):
        if not 0 < len(tokens) <= room:
            raise ConfigError(
                f"eval prompt {prompt[:40]!r} has {len(tokens)} tokens, but the model's "
                f"{config.model.max_len} positions leave {max(room, 0)} after "
                f"eval.max_new_tokens={config.eval.max_new_tokens}; shorten it or lower "
                "eval.max_new_tokens."
            )
    return prompts, ids, tokenizer


def _tokenizer(config: Config) -> Tokenizer:
    if config.data.tokenizer:
        return load_tokenizer(config.data.tokenizer)
    return load_tokenizer(tokenizer_location(Path(config.data.path)))


class Samples:
    """Generates the run's eval prompts from a training state (see the module docstring)."""

    def __init__(self, config: Config, trainer: Trainer) -> None:
        self.config, self.trainer = config, trainer
        self.prompts, self.ids, tokenizer = prompt_ids(config)
        self._generator: Generator | None = None
        if tokenizer is not None:
            self.tokenizer, self.eos = tokenizer, tokenizer.specials.eos

    def _params(self, state: TrainState) -> Any:
        graphdef, abstract = nnx.split(self.trainer.task.abstract_model(self.config.model))
        nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, state.params))
        return graphdef, abstract

    def write(self, step: int, state: TrainState, writer: MetricsWriter) -> None:
        if not self.prompts:
            return
        graphdef, params = self._params(state)
        if self._generator is None:
            self._generator = Generator(self.config.model, graphdef, params, self.trainer.mesh)
        else:
            self._generator.update(params)
        e = self.config.eval
        out = self._generator.generate(
            self.ids, e.max_new_tokens, temperature=e.temperature, top_k=e.top_k, top_p=e.top_p,
            seed=e.seed, stop_ids=() if self.eos is None else (self.eos,),
        )  # fmt: skip
        rows = []
        for prompt, (ids, _, stopped) in zip(self.prompts, out, strict=True):
            text = self.tokenizer.decode(ids[:-1] if stopped else ids)
            rows.append({"prompt": prompt, "completion": text})
        writer.samples(step, rows)
