"""Typed, frozen run configuration: YAML files validated (pydantic) into the frozen dataclasses
of core/sections.py, plus dotted overrides.

A config file names only the sections and keys it changes; everything else takes the defaults
there. Unknown keys, keys given twice and values of the wrong type or outside their allowed set
fail here, before any device work, with one sentence naming the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from bertgpt_jax.core import fs  # a workdir's config.yaml may be on gs://
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.core.sections import (
    PRETRAINING_TASKS,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    MeshConfig,
    ModelConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "PRETRAINING_TASKS", "SHIPPED_CONFIGS", "CheckpointConfig", "Config", "DataConfig",
    "EvalConfig", "MeshConfig", "ModelConfig", "TaskConfig", "TrainConfig", "config_from_dict",
    "config_to_dict", "dump_config", "load_config", "parse_override", "shipped_config",
]  # fmt: skip

_ADAPTER = pydantic.TypeAdapter(Config)


def _hint(loc: tuple[Any, ...]) -> tuple[Any, list[str]]:
    """The annotated type at a config location, and the keys valid beside it."""
    tp: Any = Config
    keys: list[str] = []
    for name in loc:
        keys = sorted(f.name for f in dataclasses.fields(tp))
        tp = typing.get_type_hints(tp, include_extras=True).get(str(name), Any)
        if not dataclasses.is_dataclass(tp):
            break
    return tp, keys


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return f"a {getattr(tp, '__name__', tp)}"


def _sentence(error: Any) -> str:
    """One pydantic validation error as the config's sentence: the key and what is valid."""
    loc = tuple(error["loc"])
    key = ".".join(map(str, loc))
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        _, keys = _hint(loc)
        return f"unknown config key {key!r}; valid keys here are: {', '.join(keys)}."
    if error["type"] in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        return f"{key or 'the config'} must be a mapping of keys to values."
    tp, _ = _hint(loc)
    return f"{key}={error['input']!r} is not valid: expected {_allowed(tp)}."


def _validate(config: Config) -> None:
    m, t, d = config.model, config.train, config.data
    checks = [
        (
            m.hidden_size % m.num_heads == 0,
            "model.hidden_size must be divisible by model.num_heads",
        ),
        (
            m.family != "gpt" or m.norm_position == "pre",
            "a gpt model needs model.norm_position=pre",
        ),
        (d.seq_len <= m.max_len, "data.seq_len must not exceed model.max_len"),
        (t.batch_size % t.microbatches == 0, "train.batch_size must divide by train.microbatches"),
        (0.0 < d.masked_lm_prob < 1.0, "data.masked_lm_prob must lie strictly between 0 and 1"),
        (t.steps > 0 and t.batch_size > 0, "train.steps and train.batch_size must be positive"),
        (
            m.causal or not (config.eval.prompts or config.eval.prompts_file),
            "eval.prompts and eval.prompts_file generate samples, which needs a gpt model",
        ),
        (config.eval.max_new_tokens > 0, "eval.max_new_tokens must be positive"),
        (
            [config.mesh.data, config.mesh.fsdp, config.mesh.tensor].count(-1) <= 1,
            "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    keys = ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len")
    for key in (*keys, "vocab_multiple"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}.")
    _validate_numbers(t)


# The largest float32: a learning rate above it is infinite on the device.
_FLOAT32_MAX = 3.4028234663852886e38


def _validate_numbers(t: TrainConfig) -> None:
    """Optimizer numbers that would make the very first update non-finite or meaningless."""
    lr = t.learning_rate
    if not (math.isfinite(lr) and 0.0 < lr < _FLOAT32_MAX):
        raise ConfigError(
            f"train.learning_rate={lr!r} must be a finite positive number (e.g. 1e-4 for BERT, "
            "6e-4 for GPT-2 small)."
        )
    if not math.isfinite(t.grad_clip_norm):
        raise ConfigError(f"train.grad_clip_norm={t.grad_clip_norm!r} must be finite (0: none).")
    for key in ("weight_decay", "eps", "nsp_weight"):
        value = getattr(t, key)
        if not (math.isfinite(value) and 0.0 <= value < _FLOAT32_MAX):
            raise ConfigError(f"train.{key}={value!r} must be a finite number >= 0.")
    for key in ("b1", "b2"):
        if not 0.0 <= getattr(t, key) < 1.0:
            raise ConfigError(f"train.{key}={getattr(t, key)!r} must lie in [0, 1).")
    for key in ("warmup_steps", "eval_steps"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}={getattr(t, key)} must not be negative.")
    if t.log_every <= 0 or t.microbatches <= 0:
        raise ConfigError("train.log_every and train.microbatches must be positive.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_unique(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(
                f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})."
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.steps=100` -> (["train", "steps"], 100); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r} has a value that is not valid YAML: {err}.") from err
    return key.strip().split("."), value


def config_from_dict(data: Any, overrides: typing.Sequence[str] = ()) -> Config:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            "the config must be a mapping of sections (model:, data:, train:, ...) to keys and "
            f"values, not a {type(data).__name__}."
        )
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    seen: set[str] = set()
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(
                f"override {text!r} must name a section and a key, e.g. train.steps=10."
            )
        if ".".join(path) in seen:
            raise ConfigError(f"override {'.'.join(path)!r} is given twice.")
        seen.add(".".join(path))
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"config section {path[0]!r} must be a mapping.")
        section[path[1]] = value
    try:
        config = _ADAPTER.validate_python(data)
    except pydantic.ValidationError as err:
        raise ConfigError(_sentence(err.errors()[0])) from None
    if not config.task.name:
        config = config.replace(task=TaskConfig(PRETRAINING_TASKS[config.model.family]))
    _validate(config)
    return config


# The configs that ship inside the package (also linked as configs/ in a source checkout).
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def shipped_config(name: str | Path) -> Path | None:
    """A shipped config named `bert_tiny`, `bert_tiny.yaml` or `configs/bert_tiny.yaml`, so the
    README's commands work from a wheel install as from a checkout; None if there is none."""
    text = str(name)
    if fs.is_remote(text):
        return None
    stem = Path(text).name.removesuffix(".yaml")
    candidate = SHIPPED_CONFIGS / f"{stem}.yaml"
    parent = Path(text).parent
    if candidate.is_file() and str(parent) in (".", "configs"):
        return candidate
    return None


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config file and applies `section.key=value` overrides."""
    file = fs.as_path(path)
    if not file.is_file():
        file = shipped_config(path) or file
    if file.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass a YAML file inside it.")
    if not file.is_file():
        shipped = ", ".join(p.stem for p in sorted(SHIPPED_CONFIGS.glob("*.yaml")))
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass a YAML file or one of the shipped "
            f"configs ({shipped})."
        )
    try:
        data = yaml.load(file.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        where = " ".join(str(err).split())  # PyYAML's message spans several lines
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {where}.") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not a text file ({err.reason}).") from err
    if data is None:
        # An empty file would silently train every default (BERT-base): almost surely a mistake.
        raise ConfigError(
            f"config file {str(path)!r} is empty; give at least the model: section, e.g. copy "
            "configs/bert_tiny.yaml."
        )
    return config_from_dict(data, overrides)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
