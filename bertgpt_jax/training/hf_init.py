"""Continued pretraining from a HuggingFace checkpoint (`checkpoint.init_from_hf=DIR`).

The directory decides the architecture: `adopt_hf_architecture` takes the model's shape from
its config.json (a `model.*` key given on the command line that contradicts it is refused,
naming both values), and its tokenizer is the run's: a store prepared with another tokenizer is
refused, naming both. `state_from_hf` then builds step 0 of a run from its weights; heads the
directory lacks (a `BertModel` or `BertForMaskedLM` has no NSP head) start fresh, as the log
says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from bertgpt_jax.core.config import Config, config_from_dict, config_to_dict, parse_override
from bertgpt_jax.core.errors import CheckpointError, ConfigError
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.training.provenance import RUNTIME_MODEL_KEYS, architecture_keys, config_changes
from bertgpt_jax.training.step import Trainer, TrainState

# How a model is run, not what it is: these stay as the config says.
_KEEP = frozenset({"dtype", "attention_impl", "scan_layers", "remat", "vocab_multiple"})


def adopt_hf_architecture(config: Config, overrides: Sequence[str] = ()) -> Config:
    """`config` with its model section from checkpoint.init_from_hf's config.json; a model key
    in `overrides` (the command line) that contradicts the checkpoint is refused."""
    path = hf_files.local_dir(config.checkpoint.init_from_hf, "checkpoint.init_from_hf")
    theirs = hf_files.read_model_config(path)
    if theirs.family != config.model.family:
        raise ConfigError(
            f"checkpoint.init_from_hf={path} is a {theirs.family} model but the config trains "
            f"a {config.model.family} one; start from a {theirs.family} config."
        )
    given = {".".join(parse_override(o)[0]) for o in overrides}
    adopted = dict(config_to_dict(config)["model"])
    for field in dataclasses.fields(theirs):
        value = getattr(theirs, field.name)
        if field.name in _KEEP or adopted[field.name] == value:
            continue
        key = f"model.{field.name}"
        if key in given and field.name not in RUNTIME_MODEL_KEYS:
            raise ConfigError(
                f"{key}={adopted[field.name]!r} contradicts checkpoint.init_from_hf={path}, "
                f"whose config.json has {value!r}; drop the override or pick another checkpoint."
            )
        if key not in given:
            adopted[field.name] = value
    return config_from_dict({**config_to_dict(config), "model": adopted})


def state_from_hf(trainer: Trainer, path: str | Path, tokenizer: dict | None) -> TrainState:
    """A fresh training state (step 0, new optimizer state) holding an HF model's parameters,
    for continued pretraining; refuses a model whose architecture differs from the config's."""
    path = hf_files.local_dir(path, "checkpoint.init_from_hf")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.init_from_hf={path} is not a directory.")
    hf_model, params = hf_files.load_hf(
        path, seed=trainer.config.train.seed, vocab_multiple=trainer.config.model.vocab_multiple
    )
    changes = config_changes({"model": vars(hf_model)}, trainer.config)
    fatal = architecture_keys(changes)
    if fatal:
        shown = ", ".join(
            f"{k} ({changes[k][0]!r} in config.json, {changes[k][1]!r} here)" for k in fatal
        )
        raise CheckpointError(
            f"checkpoint.init_from_hf={path} does not fit the config: {shown}; set those model "
            "keys to the HF model's values."
        )
    _check_hf_tokenizer(path, tokenizer, trainer.config)
    # Every process reads the file and places its own shards; no host holds another's.
    put = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i])  # noqa: E731
    sharded = jax.tree.map(put, params, trainer.param_shardings)

    def build(p: Any, key: jax.Array) -> TrainState:
        # The step and dropout RNG exactly as a fresh run makes them; XLA drops the random
        # parameters that this state does not use.
        fresh = trainer._init_state(key)
        return TrainState(fresh.step, p, trainer.optimizer.init(p), fresh.rng)

    init = jax.jit(build, out_shardings=trainer.state_shardings)  # as Trainer.init
    return init(sharded, jax.random.key(trainer.config.train.seed))


def _check_hf_tokenizer(path: Path, store_identity: dict | None, config: Config) -> None:
    """The HF directory's tokenizer (if it has one) is the run's: the store must have been
    prepared with it."""
    try:
        theirs = load_tokenizer(path).identity.to_json()
    except ConfigError:
        return  # weights without tokenizer files: nothing to compare
    if store_identity and theirs != store_identity:
        raise CheckpointError(
            f"checkpoint.init_from_hf={path} has another tokenizer (sha256 "
            f"{theirs['model_sha256'][:12]}) than the store at data.path={config.data.path} "
            f"({str(store_identity.get('model_sha256'))[:12]}); prepare the store with "
            f"`bertgpt prepare --tokenizer {path}`."
        )
