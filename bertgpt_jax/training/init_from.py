"""Fine-tuning's starting point (`checkpoint.init_from=PATH`): one of our training workdirs or
a HuggingFace directory (ours or any, with its own tokenizer) of the architecture the task
trains: BERT for the labelled tasks, GPT for causal_lm and sft.

`init_source` reads what the path offers before anything is written: its architecture (the
run's `model` section, runtime keys such as dtype kept from the config), its tokenizer, and a
model of the other family refused in one sentence. `state_from_init` builds step 0 of the run:
the transformer (`core`) and, where the init has one, BERT's `pooler` come from PATH; a task's
head (and a missing pooler) start fresh, exactly as `Trainer.init(train.seed)` would make them.
A GPT's output layer is its tied embedding, so it is all loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, ModelConfig, load_config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.tokenizers import tokenizer_location
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.pretrained.workdir import is_workdir, restore_params
from bertgpt_jax.training.provenance import RUNTIME_MODEL_KEYS
from bertgpt_jax.training.step import Trainer, TrainState

_log = logging.getLogger(__name__)
_FROM_CONFIG = frozenset({"dtype", "attention_impl", "scan_layers", "remat"})


@dataclasses.dataclass(frozen=True)
class InitSource:
    path: Path
    model: ModelConfig
    tokenizer: Path  # a tokenizer directory or .model file
    kind: str  # "workdir" or "hf"


_WHAT = {"bert": "BERT encoders", "gpt": "GPT decoders"}
_HF = {"bert": "HuggingFace BERT directory", "gpt": "HuggingFace GPT-2 directory"}


def init_source(path: str | Path, family: str = "bert") -> InitSource:
    """What `--init PATH` holds; a ConfigError naming the fix when it is not a `family` model."""
    where = Path(fs.require_local(path, "--init"))
    if is_workdir(where):
        model = load_config(where / "config.yaml").model
        kind, tokenizer = "workdir", Path(tokenizer_location(where))
    elif hf_files.is_hf_dir(where):
        model, kind, tokenizer = hf_files.read_model_config(where), "hf", where
    else:
        raise ConfigError(
            f"--init {where} is neither a training workdir (checkpoints/) nor a HuggingFace "
            "model directory (config.json); pass one of those."
        )
    if model.family != family:
        raise ConfigError(
            f"--init {where} is a {model.family} model; this fine-tuning task trains "
            f"{_WHAT[family]}, so pass a {family.upper()} workdir or {_HF[family]}."
        )
    return InitSource(where, model, tokenizer, kind)


def adopt(config: Config, source: InitSource) -> Config:
    """`config` with the init's architecture; how the model runs (dtype, ...) stays as given,
    and so do dropout rates the config sets away from the init's."""
    theirs = dataclasses.asdict(source.model)
    ours = dataclasses.asdict(config.model)
    default = dataclasses.asdict(ModelConfig())
    for key in RUNTIME_MODEL_KEYS | _FROM_CONFIG:
        if key in _FROM_CONFIG or ours[key] != default[key]:
            theirs[key] = ours[key]
    return config.replace(model=ModelConfig(**theirs))


def _init_params(source: InitSource, vocab_multiple: int) -> dict[str, Any]:
    if source.kind == "hf" and source.model.family == "gpt":
        _, params = hf_files.load_hf(source.path, vocab_multiple=vocab_multiple)
    elif source.kind == "hf":
        _, params = hf_files.load_hf_encoder(source.path)
    else:
        _, _, params, _ = restore_params(source.path)
    return {k: params[k] for k in ("core", "pooler") if k in params}


def state_from_init(trainer: Trainer, path: str | Path) -> TrainState:
    """Step 0 of a fine-tuning run: encoder (and pooler) from `path`, the rest fresh."""
    source = init_source(path, trainer.config.model.family)
    params = _init_params(source, trainer.config.model.vocab_multiple)
    loaded = {k: v for k, v in params.items() if k in trainer.param_shardings}
    fresh = sorted(set(trainer.param_shardings) - set(loaded))
    if fresh:
        _log.warning("initialised fresh (not in %s): %s", source.path, ", ".join(fresh))
    put = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i])  # noqa: E731
    shardings = {k: trainer.param_shardings[k] for k in loaded}
    sharded = jax.tree.map(put, loaded, shardings)

    def build(p: Any, key: jax.Array) -> TrainState:
        made = trainer._init_state(key)  # the head exactly as a fresh run makes it
        params = {**made.params, **p}
        return TrainState(made.step, params, trainer.optimizer.init(params), made.rng)

    init = jax.jit(build, out_shardings=trainer.state_shardings)
    return init(sharded, jax.random.key(trainer.config.train.seed))
